//! `shoal stack`: applications from Compose files (Swarm's `docker stack`): Compose's variable
//! interpolation and `.env` files, reading and merging the files, and the fields that take
//! several shapes.

pub mod fields;
pub mod interpolate;
pub mod load;
pub mod objects;
pub mod project;
pub mod spec;
