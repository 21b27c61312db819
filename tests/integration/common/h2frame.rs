//! Raw HTTP/2 frames, for the in-test peers that must do what no HTTP/2 library lets them
//! choose (a GOAWAY at a chosen last-stream-id, policing PINGs): the frame types and flags
//! used, a frame builder and a frame reader.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// A frame's bytes: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One frame as read: its header kept whole (a relay writes it on as it came) and payload.
pub struct Frame {
    pub head: [u8; 9],
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.head[3]
    }

    pub fn flags(&self) -> u8 {
        self.head[4]
    }

    pub fn stream(&self) -> u32 {
        u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]) & 0x7fff_ffff
    }
}

/// The next frame; None at EOF or on an error.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some(Frame { head, payload })
}
