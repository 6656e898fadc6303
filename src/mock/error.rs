//! Why a mock server did not start.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::ConfigError;

/// Why [`MockServerBuilder::start`](super::MockServerBuilder::start) failed: a value the
/// builder rejected, or a socket that could not be bound, with the address it was bound to.
///
/// The message says which address and what went wrong (`could not listen on
/// 127.0.0.1:8080: the address is already in use ...`), and so does `Debug`, which is what
/// `expect` and a `main` returning `Result<_, Box<dyn Error>>` print. The OS error stays
/// available as the [`source`](std::error::Error::source) of [`StartError::Bind`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower_throttle::mock::{MockServer, StartError};
///
/// let first = MockServer::builder().start().await.unwrap();
/// let taken = first.addr();
/// let err = MockServer::builder().bind(taken).start().await.unwrap_err();
/// assert!(matches!(err, StartError::Bind { addr, .. } if addr == taken));
/// assert!(err.to_string().contains(&taken.to_string()));
/// # }
/// ```
#[non_exhaustive]
pub enum StartError {
    /// The builder's values were rejected by
    /// [`MockServerBuilder::check`](super::MockServerBuilder::check).
    Config(ConfigError),
    /// The listening socket could not be bound (or its address read back).
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
}

impl StartError {
    /// What to tell a person about an OS error, by its kind: the common ones get a sentence
    /// that says what to change, the rest the OS's own words.
    fn reason(source: &io::Error) -> String {
        match source.kind() {
            io::ErrorKind::AddrInUse => "the address is already in use (another server, or an \
                earlier run still holding the port; pick another port, or 0 for a free one)"
                .to_owned(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".to_owned()
            }
            io::ErrorKind::AddrNotAvailable => {
                "the address is not one of this machine's".to_owned()
            }
            _ => source.to_string(),
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "mock server not started: {e}"),
            StartError::Bind { addr, source } => write!(
                f,
                "mock server could not listen on {addr}: {}",
                StartError::reason(source)
            ),
        }
    }
}

// `Debug` is what `expect` and `fn main() -> Result<_, Box<dyn Error>>` print; a derived one
// would show `Os { code: 98, kind: AddrInUse, .. }`, the thing this type exists to replace.
impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Bind { source, .. } => Some(source),
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

/// For callers that propagate with `?` into an `io::Result`: the kind is kept
/// (`InvalidInput` for a configuration error) and the message is this one.
impl From<StartError> for io::Error {
    fn from(e: StartError) -> Self {
        let kind = match &e {
            StartError::Config(_) => io::ErrorKind::InvalidInput,
            StartError::Bind { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}
