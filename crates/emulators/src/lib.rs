//! Emulators of third parties for tests and the dev stack (`collect emulate ...`).
//!
//! Each follows its provider's public documentation: the same paths, JSON bodies, error
//! bodies, authentication and limits, plus an `/emulator/...` admin surface to set up
//! accounts and inject faults. None shares code with the connector it serves, so a
//! misunderstanding of the API cannot be written once and pass its own tests.

mod admin;
mod hangup;
pub mod sheets;
pub mod sms;
