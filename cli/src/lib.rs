//! The operator's side of canotify: seeding a local warehouse, running the
//! whole pipeline locally in one command, the figures that show it worked,
//! how the queues and outcomes stand, and the dead letters to inspect,
//! requeue or purge. The binary `canotify` is a thin shell over these
//! modules.

pub mod chaos;
pub mod demo;
pub mod dlq;
pub mod ledger;
pub mod preflight;
pub mod proxy;
pub mod seed;
pub mod stack;
pub mod status;
