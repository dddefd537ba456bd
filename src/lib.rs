pub mod attention;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod fsutil;
pub mod model;
pub mod optim;
pub mod plot;
