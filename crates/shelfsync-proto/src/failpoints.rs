//! Failpoints for the fault suite (docs/testing.md), the part the
//! coordinator and the agent share: configuring them from the `FAILPOINTS`
//! environment variable and at run time, and the two shapes of point that
//! are not a plain `fail::fail_point!` (a crash, a switched behaviour).
//!
//! Each service names its own points (its `failpoints` module) and puts
//! them where the faults happen. All of it is compiled in only with the
//! `failpoints` cargo feature, which only the fault suite turns on: in any
//! other build `fail_point!` expands to nothing, [`crash_point`] and
//! [`triggered`] do nothing, and `FAILPOINTS` is ignored with a warning. A
//! failpoint that is not configured is off.

/// Configures the failpoints listed in the `FAILPOINTS` environment
/// variable (`name=actions;name2=actions`, the `fail` crate's syntax:
/// `return`, `return(enospc)`, `off`, `50%return`, `1*return`,
/// `sleep(100)`, ...). An entry that does not parse is an error naming it.
pub fn setup_from_env() -> Result<(), String> {
    let Some(spec) = std::env::var_os("FAILPOINTS") else {
        return Ok(());
    };
    let spec = spec
        .into_string()
        .map_err(|_| "FAILPOINTS is not valid UTF-8".to_string())?;
    configure(&spec)
}

/// Configures every `name=actions` entry of `spec` (`;`-separated).
#[cfg(feature = "failpoints")]
fn configure(spec: &str) -> Result<(), String> {
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS entry {entry:?} is not name=actions"))?;
        set(name.trim(), actions).map_err(|err| format!("FAILPOINTS entry {entry:?}: {err}"))?;
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn configure(spec: &str) -> Result<(), String> {
    if !spec.trim().is_empty() {
        tracing::warn!(
            FAILPOINTS = spec,
            "FAILPOINTS is set, but this build has no failpoints (cargo feature `failpoints`); ignored"
        );
    }
    Ok(())
}

/// Sets the actions of the failpoint `name`, as `fail::cfg` parses them.
#[cfg(feature = "failpoints")]
pub fn set(name: &str, actions: &str) -> Result<(), String> {
    let actions = actions.trim();
    fail::cfg(name, actions)?;
    tracing::info!(failpoint = name, actions, "failpoint configured");
    Ok(())
}

/// Every configured failpoint and its actions.
#[cfg(feature = "failpoints")]
pub fn list() -> std::collections::BTreeMap<String, String> {
    fail::list().into_iter().collect()
}

/// The error a triggered disk failpoint returns: its argument names it
/// (`eio`, the default, or `enospc`).
pub fn io_error(arg: Option<String>) -> std::io::Error {
    /// Linux's `EIO` and `ENOSPC`.
    const EIO: i32 = 5;
    const ENOSPC: i32 = 28;
    let code = match arg.as_deref().map(str::trim) {
        Some("enospc") => ENOSPC,
        _ => EIO,
    };
    std::io::Error::from_raw_os_error(code)
}

/// Crashes the process here, as a `kill -9` would (`abort`: no unwinding,
/// no flush, no destructor), when the failpoint `name` triggers; any action
/// that triggers crashes. A no-op in a build without failpoints.
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| std::process::abort());
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether the failpoint `name` is set to an action that triggers
/// (always false in a build without failpoints): for the failpoints that
/// switch a behaviour rather than fail a call.
pub fn triggered(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_errors_follow_the_argument() {
        assert_eq!(io_error(None).raw_os_error(), Some(5));
        assert_eq!(io_error(Some("eio".into())).raw_os_error(), Some(5));
        assert_eq!(io_error(Some("enospc".into())).raw_os_error(), Some(28));
    }
}
