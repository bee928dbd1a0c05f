//! The auto-configuration protocol (SEEDS 004): STARTUP → NEED_INFO → INFO → ACK,
//! HEARTBEAT while alive, SHUTDOWN on a clean stop. Every packet is authenticated
//! by a MAC under the cluster secret and carries a sequence number against replay.

pub mod agent;
pub mod listener;
pub mod packet;
