//! CHAP with MD5 (RFC 1994, as RFC 7143 §12.1.3 uses it): one-way, and mutual when the
//! initiator sends its own challenge.

use md5::{Digest, Md5};

use crate::text;

/// CHAP_A value for MD5, the only algorithm initiators implement.
pub const ALGORITHM_MD5: &str = "5";
const CHALLENGE_LEN: usize = 16;

/// Why CHAP failed; all end the login with "authentication failure".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("the initiator offers no CHAP algorithm we support")]
    Algorithm,
    #[error("CHAP key {0} missing or malformed")]
    Malformed(&'static str),
    #[error("unknown CHAP name or wrong response")]
    WrongResponse,
    #[error("mutual CHAP refused: {0}")]
    Mutual(&'static str),
}

/// The response to a challenge: MD5(id || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// The challenge the target sent.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub id: u8,
    pub challenge: Vec<u8>,
}

impl Challenge {
    /// Answers CHAP_A: picks MD5 and issues a fresh challenge.
    pub fn issue(algorithms: &str) -> Result<(Challenge, text::Pairs), ChapError> {
        if !algorithms.split(',').any(|a| a == ALGORITHM_MD5) {
            return Err(ChapError::Algorithm);
        }
        let c = Challenge { id: fastrand::u8(..), challenge: (0..CHALLENGE_LEN).map(|_| fastrand::u8(..)).collect() };
        let pairs = vec![
            ("CHAP_A".to_owned(), ALGORITHM_MD5.to_owned()),
            ("CHAP_I".to_owned(), c.id.to_string()),
            ("CHAP_C".to_owned(), text::hex(&c.challenge)),
        ];
        Ok((c, pairs))
    }

    /// Checks the initiator's CHAP_R against `secret`.
    pub fn verify(&self, secret: &[u8], chap_r: &str) -> Result<(), ChapError> {
        let r = text::binary(chap_r).ok_or(ChapError::Malformed("CHAP_R"))?;
        let want = response(self.id, secret, &self.challenge);
        // Not secret-dependent timing in any useful way: the challenge is fresh each time.
        if r.as_slice() == want.as_slice() {
            Ok(())
        } else {
            Err(ChapError::WrongResponse)
        }
    }

    /// The target's answer to a mutual challenge (CHAP_I, CHAP_C from the initiator).
    pub fn mutual(&self, chap_i: &str, chap_c: &str, name: &str, secret: &[u8]) -> Result<text::Pairs, ChapError> {
        let id = text::number(chap_i).and_then(|i| u8::try_from(i).ok()).ok_or(ChapError::Malformed("CHAP_I"))?;
        let c = text::binary(chap_c).ok_or(ChapError::Malformed("CHAP_C"))?;
        if c.is_empty() || c.len() > 1024 {
            return Err(ChapError::Malformed("CHAP_C"));
        }
        // RFC 7143 §12.1.3: an initiator replaying our own challenge is reflecting it back at us.
        if c == self.challenge {
            return Err(ChapError::Mutual("the initiator's challenge repeats ours"));
        }
        Ok(vec![("CHAP_N".to_owned(), name.to_owned()), ("CHAP_R".to_owned(), text::hex(&response(id, secret, &c)))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_and_mutual() {
        assert_eq!(Challenge::issue("7,6").unwrap_err(), ChapError::Algorithm);
        let (c, pairs) = Challenge::issue("7,5").unwrap();
        assert_eq!(pairs[0].1, "5");
        let good = text::hex(&response(c.id, b"secretsecret", &c.challenge));
        assert_eq!(c.verify(b"secretsecret", &good), Ok(()));
        assert_eq!(c.verify(b"wrongsecret!", &good), Err(ChapError::WrongResponse));
        assert_eq!(c.verify(b"secretsecret", "zz"), Err(ChapError::Malformed("CHAP_R")));
        let m = c.mutual("7", "0x0102", "tgt", b"targetsecret").unwrap();
        assert_eq!(m[1].1, text::hex(&response(7, b"targetsecret", &[1, 2])));
        assert!(c.mutual("7", &text::hex(&c.challenge), "tgt", b"x").is_err());
        assert!(c.mutual("300", "0x01", "tgt", b"x").is_err());
    }
}
