//! Log output: `[log] format` (pretty for terminals, JSON lines for collectors) and `level`,
//! which `SIGNPROXY_LOG` (a tracing filter such as `debug` or `signproxy=trace`) overrides.
//! Logs go to stderr; stdout is left to subcommands' output.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber once; later calls do nothing.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_env("SIGNPROXY_LOG")
        .unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Pretty => builder.try_init(),
        // Flattened, so each line is {"timestamp","level","message","request_id",...}.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
