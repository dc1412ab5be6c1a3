//! `shoal stack`: applications from Compose files (Swarm's `docker stack`): Compose's variable
//! interpolation and `.env` files, and reading and merging the files.

pub mod interpolate;
pub mod load;
