//! Integration tests: lockd over real sockets against real `redis-server` processes.

mod helpers;
mod history;

mod access;
mod chaos;
mod deployments;
mod errors;
mod events;
mod faults;
mod fuzz;
mod listing;
mod locks;
mod operations;
mod sse;
mod topologies;
mod waiting;
