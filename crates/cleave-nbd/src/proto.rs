//! NBD wire format: constants and pure parse/serialize functions.
//!
//! Everything here works on byte slices and never does I/O, so it can be
//! unit-tested and fuzzed on its own. Numbers are big-endian on the wire.

use thiserror::Error;

/// "NBDMAGIC": first word of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle greeting magic and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server → client, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
// Client flags (32 bits).
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

// NBD_REP_INFO types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Error values carried in replies (POSIX numbering, fixed by the protocol).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Largest option payload we read; bigger ones get `NBD_REP_ERR_TOO_BIG` and a close.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// The protocol's hard limit on strings (export names, messages).
pub const MAX_STRING_LEN: usize = 4096;
/// Length of the server greeting (magic, IHAVEOPT, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of an option request header.
pub const OPTION_HEADER_LEN: usize = 16;

/// A byte sequence that is not valid NBD.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    #[error("bad magic {got:#x}")]
    BadMagic { got: u64 },
    #[error("client flags {0:#x} are unknown or lack FIXED_NEWSTYLE")]
    ClientFlags(u32),
    #[error("option payload is {0} bytes short")]
    Truncated(usize),
    #[error("option payload has {0} trailing bytes")]
    Trailing(usize),
    #[error("string of {0} bytes exceeds the protocol limit")]
    StringTooLong(usize),
    #[error("string is not UTF-8 or contains NUL")]
    BadString,
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

// ---------------------------------------------------------------- handshake

/// Fixed newstyle greeting advertising FIXED_NEWSTYLE and NO_ZEROES.
pub fn server_greeting() -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// What the client agreed to in its flags word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub no_zeroes: bool,
}

/// The spec says drop the connection on unknown flags; we also insist on fixed newstyle.
pub fn parse_client_flags(b: &[u8; 4]) -> Result<ClientFlags, ProtoError> {
    let f = u32::from_be_bytes(*b);
    if f & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 || f & CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ProtoError::ClientFlags(f));
    }
    Ok(ClientFlags { no_zeroes: f & CLIENT_FLAG_NO_ZEROES != 0 })
}

/// Header of one option request; `len` bytes of payload follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let magic = be_u64(b, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic { got: magic });
    }
    Ok(OptionHeader { option: be_u32(b, 8), len: be_u32(b, 12) })
}

/// Inverse of [`parse_option_header`]; clients (tests, fuzzers) use it.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(OPTION_HEADER_LEN + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn parse_string(b: &[u8]) -> Result<String, ProtoError> {
    if b.len() > MAX_STRING_LEN {
        return Err(ProtoError::StringTooLong(b.len()));
    }
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\0') => Ok(s.to_owned()),
        _ => Err(ProtoError::BadString),
    }
}

/// Payload of `NBD_OPT_EXPORT_NAME`: the whole payload is the name.
pub fn parse_export_name(data: &[u8]) -> Result<String, ProtoError> {
    parse_string(data)
}

/// Payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    if data.len() < 4 {
        return Err(ProtoError::Truncated(4 - data.len()));
    }
    let name_len = be_u32(data, 0) as usize;
    let rest = &data[4..];
    // name + u16 count must fit; compare without overflow on 32-bit usize.
    if rest.len() < 2 || name_len > rest.len() - 2 {
        let need = name_len.saturating_add(2);
        return Err(ProtoError::Truncated(need.saturating_sub(rest.len())));
    }
    let name = parse_string(&rest[..name_len])?;
    let rest = &rest[name_len..];
    let count = be_u16(rest, 0) as usize;
    let rest = &rest[2..];
    let want = count * 2;
    if rest.len() < want {
        return Err(ProtoError::Truncated(want - rest.len()));
    }
    if rest.len() > want {
        return Err(ProtoError::Trailing(rest.len() - want));
    }
    let infos = rest.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    Ok(InfoRequest { name, infos })
}

/// Inverse of [`parse_info_request`].
pub fn encode_info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(6 + name.len() + 2 * infos.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        b.extend_from_slice(&i.to_be_bytes());
    }
    b
}

/// One option reply: magic, option, type, length, data.
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply_type.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// Parsed option reply header: (option, reply type, data length).
pub fn parse_option_reply_header(b: &[u8; 20]) -> Result<(u32, u32, u32), ProtoError> {
    let magic = be_u64(b, 0);
    if magic != OPT_REPLY_MAGIC {
        return Err(ProtoError::BadMagic { got: magic });
    }
    Ok((be_u32(b, 8), be_u32(b, 12), be_u32(b, 16)))
}

/// Data of an `NBD_REP_SERVER` reply.
pub fn rep_server_data(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// Data of `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Inverse of [`info_export`]: (size, transmission flags), if `b` is an `NBD_INFO_EXPORT`.
pub fn parse_info_export(b: &[u8]) -> Option<(u64, u16)> {
    let b: &[u8; 12] = b.try_into().ok()?;
    (be_u16(b, 0) == INFO_EXPORT).then(|| (be_u64(b, 2), be_u16(b, 10)))
}

/// Inverse of [`server_greeting`]: the server's handshake flags.
pub fn parse_greeting(b: &[u8; GREETING_LEN]) -> Result<u16, ProtoError> {
    for (at, want) in [(0, NBD_MAGIC), (8, IHAVEOPT)] {
        let got = be_u64(b, at);
        if got != want {
            return Err(ProtoError::BadMagic { got });
        }
    }
    Ok(be_u16(b, 16))
}

/// Data of `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn info_string(info: u16, s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&info.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// Data of `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&min.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..14].copy_from_slice(&max.to_be_bytes());
    b
}

/// Block size constraints we advertise: min 1, a power-of-two preferred size within
/// [512, max] (as the spec demands), and `max_request` as the maximum.
pub fn block_sizes(device_preferred: u32, max_request: u32) -> (u32, u32, u32) {
    let max = max_request.max(512);
    let largest_pow2_le_max = 1u32 << (31 - max.leading_zeros());
    let pref = device_preferred.clamp(512, largest_pow2_le_max);
    let pref = if pref.is_power_of_two() { pref } else { 1u32 << (31 - pref.leading_zeros()) };
    (1, pref, max)
}

/// Reply to `NBD_OPT_EXPORT_NAME`: size, flags and (unless NO_ZEROES) 124 zero bytes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + 124);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.resize(10 + 124, 0);
    }
    b
}

// ------------------------------------------------------------- transmission

/// Request type; unknown values are kept so the server can answer EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
    Other(u16),
}

impl Command {
    pub fn from_wire(t: u16) -> Self {
        match t {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::Other(t) => t,
        }
    }

    /// Request flags this server accepts with the command. FUA is allowed everywhere
    /// because the spec says servers advertising SEND_FUA must accept it on any command.
    fn allowed_flags(self) -> u16 {
        match self {
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            Command::Disc => u16::MAX,
            _ => CMD_FLAG_FUA,
        }
    }
}

/// One transmission request header; for writes `len` payload bytes follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

/// Only the magic can be wrong here; a bad magic means the stream is out of sync.
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
    let magic = be_u32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic { got: magic as u64 });
    }
    Ok(Request {
        flags: be_u16(b, 4),
        command: Command::from_wire(be_u16(b, 6)),
        handle: be_u64(b, 8),
        offset: be_u64(b, 16),
        len: be_u32(b, 24),
    })
}

/// Inverse of [`parse_request`].
pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.command.to_wire().to_be_bytes());
    b[8..16].copy_from_slice(&r.handle.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// What a request may do to an export; the inputs of [`check_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    pub size: u64,
    pub read_only: bool,
    pub max_request: u32,
}

/// Validates a request before it reaches the device; `Err` is the NBD error to reply with.
///
/// `Disc` always passes. Length checks for oversized writes are the caller's job too,
/// because it must decide whether to drain the payload.
pub fn check_request(r: &Request, lim: &ExportLimits) -> Result<(), u32> {
    if r.flags & !r.command.allowed_flags() != 0 {
        return Err(EINVAL);
    }
    let writes = match r.command {
        Command::Disc => return Ok(()),
        Command::Flush => return Ok(()),
        Command::Other(_) => return Err(EINVAL),
        Command::Read => false,
        Command::Write | Command::Trim | Command::WriteZeroes => true,
    };
    if writes && lim.read_only {
        return Err(EPERM);
    }
    if matches!(r.command, Command::Read | Command::Write) && r.len > lim.max_request {
        return Err(EINVAL);
    }
    match r.offset.checked_add(r.len as u64) {
        Some(end) if end <= lim.size => Ok(()),
        _ => Err(EINVAL),
    }
}

/// Header of a simple reply; read data (if any) follows it.
pub fn simple_reply_header(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// Inverse of [`simple_reply_header`]: (error, handle).
pub fn parse_simple_reply(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<(u32, u64), ProtoError> {
    let magic = be_u32(b, 0);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(ProtoError::BadMagic { got: magic as u64 });
    }
    Ok((be_u32(b, 4), be_u64(b, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_side_parsers_invert_the_server_side_encoders() {
        assert_eq!(parse_info_export(&info_export(1 << 40, 0x1ff)), Some((1 << 40, 0x1ff)));
        assert_eq!(parse_info_export(&info_block_size(1, 2, 3)), None);
        assert_eq!(parse_info_export(&[0; 11]), None);
        assert_eq!(parse_greeting(&server_greeting()), Ok(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        let mut g = server_greeting();
        g[9] ^= 1;
        assert!(matches!(parse_greeting(&g), Err(ProtoError::BadMagic { .. })));
    }

    #[test]
    fn greeting_layout() {
        let g = server_greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags(&[0, 0, 0, 1]), Ok(ClientFlags { no_zeroes: false }));
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Ok(ClientFlags { no_zeroes: true }));
        assert_eq!(parse_client_flags(&[0, 0, 0, 0]), Err(ProtoError::ClientFlags(0)));
        assert_eq!(parse_client_flags(&[0, 0, 0, 2]), Err(ProtoError::ClientFlags(2)));
        assert_eq!(parse_client_flags(&[0, 0, 0, 5]), Err(ProtoError::ClientFlags(5)));
        assert_eq!(parse_client_flags(&[0x80, 0, 0, 1]), Err(ProtoError::ClientFlags(0x8000_0001)));
    }

    #[test]
    fn option_header_roundtrip() {
        let enc = encode_option(OPT_GO, b"abc");
        let h = parse_option_header(enc[..16].try_into().unwrap()).unwrap();
        assert_eq!(h, OptionHeader { option: OPT_GO, len: 3 });
        let mut bad = enc.clone();
        bad[0] ^= 1;
        assert!(matches!(parse_option_header(bad[..16].try_into().unwrap()), Err(ProtoError::BadMagic { .. })));
    }

    #[test]
    fn info_request_roundtrip_and_errors() {
        let enc = encode_info_request("disk", &[INFO_NAME, INFO_BLOCK_SIZE]);
        assert_eq!(
            parse_info_request(&enc),
            Ok(InfoRequest { name: "disk".into(), infos: vec![INFO_NAME, INFO_BLOCK_SIZE] })
        );
        assert_eq!(parse_info_request(&encode_info_request("", &[])).unwrap().name, "");
        // Truncated everywhere.
        for cut in 0..enc.len() {
            assert!(parse_info_request(&enc[..cut]).is_err(), "cut {cut}");
        }
        // Trailing garbage.
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(parse_info_request(&long), Err(ProtoError::Trailing(1)));
        // Name length pointing far past the end.
        let mut huge = enc.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse_info_request(&huge), Err(ProtoError::Truncated(_))));
        // Bad UTF-8 and NUL.
        assert_eq!(parse_info_request(&encode_info_request("a\0b", &[])), Err(ProtoError::BadString));
        let mut bad = encode_info_request("ab", &[]);
        bad[4] = 0xff;
        assert_eq!(parse_info_request(&bad), Err(ProtoError::BadString));
        let long_name = "x".repeat(MAX_STRING_LEN + 1);
        assert!(matches!(parse_info_request(&encode_info_request(&long_name, &[])), Err(ProtoError::StringTooLong(_))));
    }

    #[test]
    fn export_name() {
        assert_eq!(parse_export_name(b"disk").unwrap(), "disk");
        assert_eq!(parse_export_name(b"").unwrap(), "");
        assert!(parse_export_name(&[0xc3]).is_err());
    }

    #[test]
    fn request_roundtrip() {
        let r = Request { flags: CMD_FLAG_FUA, command: Command::Write, handle: 7, offset: 4096, len: 512 };
        let enc = encode_request(&r);
        assert_eq!(parse_request(&enc), Ok(r));
        let o = Request { command: Command::Other(99), ..r };
        assert_eq!(parse_request(&encode_request(&o)), Ok(o));
        let mut bad = enc;
        bad[3] ^= 0xff;
        assert!(matches!(parse_request(&bad), Err(ProtoError::BadMagic { .. })));
    }

    #[test]
    fn request_checks() {
        let lim = ExportLimits { size: 1 << 20, read_only: false, max_request: 65536 };
        let ro = ExportLimits { read_only: true, ..lim };
        let req = |command, flags, offset, len| Request { flags, command, handle: 1, offset, len };
        assert_eq!(check_request(&req(Command::Read, 0, 0, 4096), &lim), Ok(()));
        assert_eq!(check_request(&req(Command::Read, 0, (1 << 20) - 1, 1), &lim), Ok(()));
        assert_eq!(check_request(&req(Command::Read, 0, 1 << 20, 0), &lim), Ok(()));
        assert_eq!(check_request(&req(Command::Read, 0, 1 << 20, 1), &lim), Err(EINVAL));
        assert_eq!(check_request(&req(Command::Read, 0, u64::MAX, 2), &lim), Err(EINVAL));
        assert_eq!(check_request(&req(Command::Read, 0, 0, 65537), &lim), Err(EINVAL));
        assert_eq!(check_request(&req(Command::Trim, 0, 0, 1 << 20), &lim), Ok(()));
        assert_eq!(check_request(&req(Command::Write, 0, 0, 1), &ro), Err(EPERM));
        assert_eq!(check_request(&req(Command::Trim, 0, 0, 1), &ro), Err(EPERM));
        assert_eq!(check_request(&req(Command::WriteZeroes, 0, 0, 1), &ro), Err(EPERM));
        assert_eq!(check_request(&req(Command::Read, 0, 0, 1), &ro), Ok(()));
        assert_eq!(check_request(&req(Command::Flush, 0, 0, 0), &ro), Ok(()));
        assert_eq!(check_request(&req(Command::Other(5), 0, 0, 0), &lim), Err(EINVAL));
        assert_eq!(check_request(&req(Command::Write, CMD_FLAG_FUA, 0, 1), &lim), Ok(()));
        assert_eq!(check_request(&req(Command::Write, CMD_FLAG_NO_HOLE, 0, 1), &lim), Err(EINVAL));
        assert_eq!(check_request(&req(Command::WriteZeroes, CMD_FLAG_NO_HOLE | 1, 0, 1), &lim), Ok(()));
        assert_eq!(check_request(&req(Command::Read, CMD_FLAG_DF, 0, 1), &lim), Err(EINVAL));
        assert_eq!(check_request(&req(Command::Disc, 0xffff, 0, 0), &lim), Ok(()));
    }

    #[test]
    fn replies() {
        let h = simple_reply_header(EINVAL, 0xdead_beef);
        assert_eq!(parse_simple_reply(&h), Ok((EINVAL, 0xdead_beef)));
        let r = option_reply(OPT_LIST, REP_ERR_UNSUP, b"no");
        let (o, t, l) = parse_option_reply_header(r[..20].try_into().unwrap()).unwrap();
        assert_eq!((o, t, l), (OPT_LIST, REP_ERR_UNSUP, 2));
        assert_eq!(&r[20..], b"no");
        assert_eq!(export_name_reply(10, 1, true).len(), 10);
        assert_eq!(export_name_reply(10, 1, false).len(), 134);
        assert_eq!(info_export(1 << 20, 3)[..2], [0, 0]);
    }

    #[test]
    fn block_size_constraints() {
        assert_eq!(block_sizes(4096, 32 << 20), (1, 4096, 32 << 20));
        assert_eq!(block_sizes(0, 32 << 20), (1, 512, 32 << 20));
        assert_eq!(block_sizes(5000, 32 << 20), (1, 4096, 32 << 20));
        assert_eq!(block_sizes(u32::MAX, 32 << 20), (1, 32 << 20, 32 << 20));
        assert_eq!(block_sizes(65536, 40000), (1, 32768, 40000));
        assert_eq!(block_sizes(4096, 0), (1, 512, 512));
    }
}
