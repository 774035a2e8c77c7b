//! Logs and metrics. Logs are JSON lines carrying `service_name` and `region` on every
//! line, plus the fields of the spans they happen in (`request_id`, `correlation_id`, …).
//! Metrics use the `metrics` facade with a Prometheus recorder rendered at `/metrics`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::fmt;
use std::sync::OnceLock;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, format};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, prelude::*};

use crate::settings::{LogFormat, Settings};

/// Wraps the JSON formatter and puts the process's identity first on every line.
struct WithService {
    inner: format::Format<format::Json>,
    prefix: String,
}

impl<S, N> FormatEvent<S, N> for WithService
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let mut writer = writer;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{}{}", self.prefix, rest),
            None => writer.write_str(&line),
        }
    }
}

/// Installs the global subscriber once; later calls (tests start many apps) do nothing.
pub fn init(service_name: &str, settings: &Settings) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let filter =
            EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let registry = tracing_subscriber::registry().with(filter);
        let result = match settings.log_format {
            LogFormat::Json => {
                let prefix = format!(
                    "\"service_name\":{},\"region\":{},",
                    serde_json::Value::from(service_name),
                    serde_json::Value::from(settings.region.as_str())
                );
                let fmt = tracing_subscriber::fmt::layer()
                    .event_format(WithService {
                        inner: format::format()
                            .json()
                            .flatten_event(true)
                            .with_current_span(false)
                            .with_span_list(true),
                        prefix,
                    })
                    .fmt_fields(format::JsonFields::new())
                    .with_writer(std::io::stderr);
                registry.with(fmt).try_init()
            }
            LogFormat::Pretty => registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init(),
        };
        if let Err(e) = result {
            eprintln!("logging was already initialised: {e}");
        }
    });
}

/// Logs for tests: quiet unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let settings = Settings {
            log_format: LogFormat::Pretty,
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ..Settings::default()
        };
        init("test", &settings);
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
