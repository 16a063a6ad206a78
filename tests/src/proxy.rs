//! A TCP proxy that loses Produce responses, to make real clients retry.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// Largest response frame the proxy forwards; anything bigger ends the connection.
const PROXY_MAX_FRAME_BYTES: usize = 64 << 20;

/// Requests in flight on one proxied connection that the proxy remembers (correlation id and
/// API key), so it can tell which responses answer Produce.
const PROXY_MAX_IN_FLIGHT: usize = 1024;

const API_KEY_PRODUCE: i16 = 0;

/// A TCP proxy in front of a broker that loses Produce responses: every `drop_every`-th one is
/// not forwarded, and the connection is cut instead. The client sent its records, the broker
/// stored them, the client never heard back: it must retry them, which is exactly when an
/// idempotent producer's duplicates appear unless the broker drops them.
///
/// Start it first, start the broker advertising [`ResponseDroppingProxy::addr`] (so clients
/// come back through the proxy after bootstrap), then [`ResponseDroppingProxy::set_upstream`].
pub struct ResponseDroppingProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
}

struct ProxyShared {
    upstream: Mutex<Option<SocketAddr>>,
    drop_every: u64,
    produce_responses: AtomicU64,
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl ResponseDroppingProxy {
    pub fn start(drop_every: u64) -> ResponseDroppingProxy {
        assert!(drop_every > 0, "drop_every must be at least 1");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy's port");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(None),
            drop_every,
            produce_responses: Default::default(),
            dropped: Default::default(),
            stop: Default::default(),
        });
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accept_shared.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let upstream = *accept_shared.upstream.lock().expect("proxy lock");
                let Some(upstream) = upstream else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                proxy_connection(client, server, Arc::clone(&accept_shared));
            }
        });
        ResponseDroppingProxy { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_upstream(&self, broker: SocketAddr) {
        *self.shared.upstream.lock().expect("proxy lock") = Some(broker);
    }

    /// How many Produce responses came back from the broker (forwarded or not).
    pub fn produce_responses(&self) -> u64 {
        self.shared.produce_responses.load(Ordering::Acquire)
    }

    /// How many Produce responses were swallowed so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Acquire)
    }
}

impl Drop for ResponseDroppingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one size-prefixed frame; `None` at end of stream, on error, or if it is too large.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let size = usize::try_from(i32::from_be_bytes(size)).ok()?;
    if size > PROXY_MAX_FRAME_BYTES {
        return None;
    }
    let mut frame = vec![0u8; 4 + size];
    frame[..4].copy_from_slice(&i32::try_from(size).ok()?.to_be_bytes());
    stream.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

fn proxy_connection(mut client: TcpStream, mut server: TcpStream, shared: Arc<ProxyShared>) {
    let in_flight: Arc<Mutex<VecDeque<(i32, i16)>>> = Arc::default();
    let (Ok(mut client_w), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let requests = Arc::clone(&in_flight);
    // Client -> broker: forward every frame, remembering (correlation id, API key).
    thread::spawn(move || {
        while let Some(frame) = read_frame(&mut client) {
            if frame.len() >= 12 {
                let api_key = i16::from_be_bytes([frame[4], frame[5]]);
                let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
                let mut requests = requests.lock().expect("proxy lock");
                if requests.len() == PROXY_MAX_IN_FLIGHT {
                    requests.pop_front();
                }
                requests.push_back((correlation, api_key));
            }
            if server_w.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = server_w.shutdown(Shutdown::Both);
    });
    // Broker -> client: forward, except every drop_every-th Produce response, which is
    // swallowed and the connection cut.
    thread::spawn(move || {
        while let Some(frame) = read_frame(&mut server) {
            let correlation = frame
                .get(4..8)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            let api_key = {
                let mut requests = in_flight.lock().expect("proxy lock");
                let found = requests.iter().position(|(c, _)| Some(*c) == correlation);
                found.and_then(|i| requests.remove(i)).map(|(_, key)| key)
            };
            if api_key == Some(API_KEY_PRODUCE) {
                let n = shared.produce_responses.fetch_add(1, Ordering::AcqRel) + 1;
                if n.is_multiple_of(shared.drop_every) {
                    shared.dropped.fetch_add(1, Ordering::AcqRel);
                    break;
                }
            }
            if client_w.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = client_w.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    });
}
