//! ALUA as the host reports it: REPORT TARGET PORT GROUPS, VPD 0x83, the unit attention on a
//! change, and standby refusing media access.

mod common;

use std::sync::{Arc, Mutex};

use cleave_iscsi::{Access, Alua, AluaState, Identity, Opened, PortGroup, StaticAccess};
use common::*;

/// Two gateways; this one is group 2, port 2. The test flips the states.
struct TwoGateways {
    inner: StaticAccess,
    alua: Mutex<Alua>,
}

impl TwoGateways {
    fn set(&self, local: AluaState, other: AluaState) {
        let mut a = self.alua.lock().unwrap();
        a.groups =
            vec![PortGroup { id: 1, state: other, ports: vec![1] }, PortGroup { id: 2, state: local, ports: vec![2] }];
        a.generation += 1;
    }
}

impl Access for TwoGateways {
    fn volumes(&self, who: &Identity) -> Vec<String> {
        self.inner.volumes(who)
    }
    fn chap_required(&self, initiator: &str) -> bool {
        self.inner.chap_required(initiator)
    }
    fn chap_secret(&self, initiator: &str, chap_name: &str) -> Option<Vec<u8>> {
        self.inner.chap_secret(initiator, chap_name)
    }
    fn open(&self, volume: &str, who: &Identity) -> Option<Opened> {
        self.inner.open(volume, who)
    }
    fn alua(&self, _volume: &str) -> Alua {
        self.alua.lock().unwrap().clone()
    }
}

const RTPG: [u8; 12] = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
const TUR: [u8; 6] = [0; 6];

#[test]
fn states_unit_attention_and_standby() {
    let gw = Arc::new(TwoGateways {
        inner: access(&["disk"], 1 << 20),
        alua: Mutex::new(Alua { local_group: 2, local_port: 2, groups: Vec::new(), generation: 0 }),
    });
    gw.set(AluaState::ActiveNonOptimized, AluaState::ActiveOptimized);
    let addr = start_with(gw.clone());
    let mut c = Raw::connect(addr);
    assert_eq!(c.login(TEST_INITIATOR, "disk"), (0, 0));
    let r = c.scsi(&RTPG, &[], 256);
    assert_eq!(r.status, 0);
    // Two descriptors of 8 + 4 bytes: group 1 active/optimized, group 2 (us) non-optimized.
    assert_eq!(u32::from_be_bytes(r.data[..4].try_into().unwrap()), 24);
    assert_eq!((r.data[4] & 0xf, r.data[7], r.data[15]), (0, 1, 1));
    assert_eq!((r.data[16] & 0xf, r.data[19], r.data[27]), (1, 2, 2));
    // VPD 0x83 names our port group and relative port.
    let r = c.scsi(&[0x12, 1, 0x83, 0, 255, 0], &[], 255);
    let has =
        |kind: u8, id: u16| r.data.windows(8).any(|w| w[1] & 0xf == kind && w[3] == 4 && w[6..8] == id.to_be_bytes());
    assert!(has(0x4, 2) && has(0x5, 2), "{:x?}", r.data);
    assert_eq!(c.scsi(&TUR, &[], 0).status, 0);

    // Failover: we become standby. The next command reports the change once.
    gw.set(AluaState::Standby, AluaState::ActiveOptimized);
    let r = c.scsi(&TUR, &[], 0);
    assert_eq!(r.sense_code(), Some((0x6, 0x2a, 0x06)), "ASYMMETRIC ACCESS STATE CHANGED");
    let r = c.scsi(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(r.sense_code(), Some((0x2, 0x04, 0x0b)), "standby refuses reads");
    assert_eq!(c.scsi(&TUR, &[], 0).status, 0, "TEST UNIT READY is not media access");
    assert_eq!(c.scsi(&RTPG, &[], 256).data[16] & 0xf, 2, "we report standby");

    // And back to active/optimized: reads work again after the attention.
    gw.set(AluaState::ActiveOptimized, AluaState::Standby);
    assert_eq!(c.scsi(&TUR, &[], 0).sense_code(), Some((0x6, 0x2a, 0x06)));
    assert_eq!(c.scsi(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512).status, 0);
}
