//! Integration tests: lockd over real sockets against real `redis-server` processes.

mod helpers;

mod access;
mod errors;
mod events;
mod faults;
mod listing;
mod locks;
mod operations;
mod sse;
mod waiting;
