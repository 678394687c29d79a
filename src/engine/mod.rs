//! The executor: runs compiled chains on messages, owns per-node state, the alarm store, device
//! attributes and the timer queue, and emits [`effect::Effect`]s.
//!
//! Architecture invariant: the executor does no I/O and never reads the wall clock. Time moves
//! only when its harness calls [`Executor::advance_to`]: `dry-run` and `test` jump it to each
//! input's timestamp (the virtual clock), `run` to the wall clock. Every timer due on the way
//! fires first, in due order (ties: the order they were set), with its due time as the effect
//! time. That is why a dry-run is exact and deterministic.
//!
//! The files: `node.rs` (the node API), `executor.rs` (running chains), `devices.rs` (devices,
//! attributes, bounds), `persist.rs` (state as data), with the alarm store, the clock, effects,
//! the compiled program and the counters beside them.

pub mod alarm;
pub mod clock;
mod device;
mod devices;
pub mod effect;
mod executor;
mod keyed;
mod node;
pub mod persist;
pub mod program;
pub mod stats;

pub use device::{value_bytes, Device, MAX_DEVICE_ATTRIBUTE_BYTES, MAX_REPORTED_ATTRIBUTES};
pub use executor::{DeviceHasher, Evictions, Executor};
pub use keyed::Keyed;
pub use node::{ChannelTemplates, Cx, Flow, NodeConfig, NodeImpl, Packet, Why, MAX_TIMERS};

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_parse_into_rhai_values() {
        let m = crate::message::parse_payload(br#"{"i": 2, "f": 2.5, "b": true, "s": "x\"y", "n": null, "a": [1, {"k": 1}], "big": 18446744073709551615}"#).unwrap();
        assert_eq!(m["i"].as_int(), Ok(2));
        assert_eq!(m["f"].as_float(), Ok(2.5));
        assert_eq!(m["b"].as_bool(), Ok(true));
        assert_eq!(m["s"].to_string(), "x\"y");
        assert!(m["n"].is_unit());
        assert_eq!(m["a"].clone().into_array().unwrap().len(), 2);
        assert_eq!(m["big"].as_float(), Ok(18446744073709551615.0));
        for (text, what) in [
            (&b"[1]"[..], "array"),
            (b"3", "i64"),
            (b"18446744073709551615", "f64"),
            (b"2.5", "f64"),
            (b"\"x\"", "string"),
            (b"true", "bool"),
            (b"null", "()"),
        ] {
            assert_eq!(
                crate::message::parse_payload(text).unwrap_err(),
                format!("the payload must be a JSON object, not {what}")
            );
        }
        assert!(crate::message::parse_payload(b"{} x")
            .unwrap_err()
            .contains("not JSON"));
        assert!(crate::message::parse_payload(b"\xff").is_err());
    }
}
