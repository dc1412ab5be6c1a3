//! `shoal stack`: applications from Compose files (Swarm's `docker stack`), starting with
//! Compose's variable interpolation and `.env` files.

pub mod interpolate;
