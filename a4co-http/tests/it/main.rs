//! a4co-http against a real local server (the testkit's FaultServer).

mod client;
