//! How a request that did not complete normally ends; shared by the hooks and the relay.

use crate::error::ProxyError;

pub enum Outcome {
    /// Answer with this error (no response written yet).
    Reply(ProxyError),
    /// Close the connection: a response is under way, or the client is gone.
    Abort(&'static str),
}

impl From<ProxyError> for Outcome {
    fn from(e: ProxyError) -> Outcome {
        Outcome::Reply(e)
    }
}
