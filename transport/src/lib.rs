//! shoal's transport: QUIC (quinn) endpoints with mutual TLS rooted in the cluster's own CA,
//! join tokens, a versioned and size-bounded wire envelope, typed channels (ordered Raft stream,
//! chunked snapshot stream, datagrams for gossip, request/response), and a UDP socket that runs
//! the same endpoint code inside turmoil simulations.

pub mod frame;
pub mod join;
pub mod net;
pub mod pki;
pub mod sim;
