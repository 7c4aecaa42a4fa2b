//! The fault suite: many clients, random faults from a seed, every
//! operation recorded, and checkers that judge the recorded history.
//!
//! - [`history`]: what is recorded (one event per client operation) and
//!   read back at the end (the coordinator's histories, the replicas).
//! - [`check`]: the checkers, pure functions over a history.
//! - [`proxy`]: a UDP proxy between an agent and the coordinator that drops,
//!   delays, reorders and duplicates datagrams, and cuts either direction.
//! - [`faults`]: the fault schedule, drawn from a seed.
//! - [`workload`]: the clients, recording each op.
//! - [`run`]: one run from start to verdict; its processes and how faults
//!   are injected and healed are in `rig`, reading back the end state in
//!   `readback`.

pub mod check;
pub mod faults;
pub mod history;
pub mod proxy;
mod readback;
mod rig;
pub mod run;
pub mod workload;

pub use run::{Mutation, Report, RunSpec, run};
