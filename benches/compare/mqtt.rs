//! A blocking MQTT 3.1.1 connection for the comparison's load generator and its relay: rumqttc's
//! codec (`mqttbytes::v4`) over a plain `TcpStream`, with writes batched by the caller. The
//! generator must cost the machine as little as it can (it shares the two cores with the systems
//! it measures), and an event loop that flushes every packet on its own would be the slowest part
//! of the run.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::{Error, QoS};

const MAX_PACKET: usize = 1 << 20;

pub struct Conn {
    pub s: TcpStream,
    rbuf: BytesMut,
    tmp: Vec<u8>,
    pub wbuf: BytesMut,
}

pub fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

impl Conn {
    /// Connects with a clean session and waits for the CONNACK.
    pub fn connect(port: u16, id: &str) -> io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        let mut c = Conn {
            s,
            rbuf: BytesMut::with_capacity(256 * 1024),
            tmp: vec![0; 64 * 1024],
            wbuf: BytesMut::with_capacity(256 * 1024),
        };
        let mut connect = Connect::new(id);
        connect.keep_alive = 600;
        connect.clean_session = true;
        c.push(&Packet::Connect(connect));
        c.flush()?;
        c.s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = None;
        while got.is_none() {
            c.read(|p| {
                if let Packet::ConnAck(a) = p {
                    got = Some(a.code);
                }
            })?;
        }
        c.s.set_read_timeout(None)?;
        match got {
            Some(rumqttc::mqttbytes::v4::ConnectReturnCode::Success) => Ok(c),
            other => Err(io::Error::other(format!("CONNACK {other:?}"))),
        }
    }

    /// Subscribes to `filters` and waits for the SUBACK.
    pub fn subscribe(&mut self, filters: &[&str], q: u8) -> io::Result<()> {
        let mut sub = Subscribe::new_many(
            filters
                .iter()
                .map(|f| rumqttc::mqttbytes::v4::SubscribeFilter::new(f.to_string(), qos(q))),
        );
        sub.pkid = 1;
        self.push(&Packet::Subscribe(sub));
        self.flush()?;
        let mut done = false;
        while !done {
            self.read(|p| done |= matches!(p, Packet::SubAck(_)))?;
        }
        Ok(())
    }

    /// Encodes a packet into the write buffer (sent by `flush`).
    pub fn push(&mut self, p: &Packet) {
        let _ = p.write(&mut self.wbuf, MAX_PACKET);
    }

    /// Encodes a PUBLISH.
    pub fn publish(&mut self, topic: &str, q: u8, pkid: u16, payload: &[u8]) {
        let mut p = Publish::new(topic, qos(q), payload.to_vec());
        p.pkid = pkid;
        let _ = p.write(&mut self.wbuf);
    }

    /// Encodes a PUBACK.
    pub fn puback(&mut self, pkid: u16) {
        let _ = PubAck::new(pkid).write(&mut self.wbuf);
    }

    /// Writes what was encoded, in one `write` where the socket takes it.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.s.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// One `read` from the socket; every whole packet it completes goes to `f`. Ok(false) at
    /// end of stream.
    pub fn read(&mut self, mut f: impl FnMut(Packet)) -> io::Result<bool> {
        let n = self.s.read(&mut self.tmp)?;
        if n == 0 {
            return Ok(false);
        }
        self.rbuf.extend_from_slice(&self.tmp[..n]);
        loop {
            match Packet::read(&mut self.rbuf, MAX_PACKET) {
                Ok(p) => f(p),
                Err(Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(io::Error::other(format!("{e:?}"))),
            }
        }
        Ok(true)
    }
}

/// A second handle on the same socket (a reader thread beside a writer).
pub fn reader(c: &Conn) -> io::Result<Conn> {
    Ok(Conn {
        s: c.s.try_clone()?,
        rbuf: BytesMut::with_capacity(256 * 1024),
        tmp: vec![0; 64 * 1024],
        wbuf: BytesMut::new(),
    })
}
