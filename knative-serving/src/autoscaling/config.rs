//! `config-autoscaler` and the revision annotations `autoscaling.knative.dev/*`
//! (`specs/SERVING.md §3.6–§3.7`).
//!
//! [`AutoscalerConfig::from_config_map`] reads the ConfigMap with upstream's
//! defaults and validation; [`Annotations`] reads a revision's autoscaling
//! annotations (the kebab-case keys, and the legacy camelCase aliases).
//! Every error names the key and the value.

use std::collections::BTreeMap;
use std::time::Duration;

use knative_core::duration;

/// The smallest target a revision may have (concurrency or RPS per pod).
pub const TARGET_MIN: f64 = 0.01;
/// The shortest stable window.
pub const WINDOW_MIN: Duration = Duration::from_secs(6);
/// The longest stable window (and scale-down delay, pod retention).
pub const WINDOW_MAX: Duration = Duration::from_secs(3600);
/// The size of one metric bucket, also the smallest panic window.
pub const BUCKET_SIZE: Duration = Duration::from_secs(1);
/// How often the decider runs.
pub const TICK_INTERVAL: Duration = Duration::from_secs(2);
/// The utilization of the RPS target (fixed; only the annotation overrides it).
pub const RPS_TARGET_UTILIZATION: f64 = 0.7;
/// `pod-autoscaler-class` of the KPA.
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";

/// A `config-autoscaler` value or autoscaling annotation that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: invalid value {value:?}: {reason}")]
pub struct AutoscalingError {
    /// The ConfigMap key or annotation.
    pub key: String,
    /// The value found.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn error(key: &str, value: impl ToString, reason: impl Into<String>) -> AutoscalingError {
    AutoscalingError {
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The metric a revision scales on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Metric {
    /// In-flight requests per pod (the default).
    #[default]
    Concurrency,
    /// Requests per second per pod.
    Rps,
}

/// `config-autoscaler`, with upstream's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscalerConfig {
    /// `enable-scale-to-zero` (true).
    pub enable_scale_to_zero: bool,
    /// `pod-autoscaler-class` (`kpa.autoscaling.knative.dev`).
    pub pod_autoscaler_class: String,
    /// `container-concurrency-target-percentage` as a fraction (0.7).
    pub container_concurrency_target_fraction: f64,
    /// `container-concurrency-target-default` (100).
    pub container_concurrency_target_default: f64,
    /// `requests-per-second-target-default` (200).
    pub rps_target_default: f64,
    /// `target-burst-capacity` (211; −1 = unlimited, activator always in the path).
    pub target_burst_capacity: f64,
    /// `stable-window` (60 s).
    pub stable_window: Duration,
    /// `panic-window-percentage` (10).
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage` (200).
    pub panic_threshold_percentage: f64,
    /// `max-scale-up-rate` (1000).
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate` (2).
    pub max_scale_down_rate: f64,
    /// `scale-to-zero-grace-period` (30 s).
    pub scale_to_zero_grace_period: Duration,
    /// `scale-to-zero-pod-retention-period` (0 s).
    pub scale_to_zero_pod_retention_period: Duration,
    /// `scale-down-delay` (0 s).
    pub scale_down_delay: Duration,
    /// `activator-capacity` (100).
    pub activator_capacity: f64,
    /// `initial-scale` (1).
    pub initial_scale: i32,
    /// `allow-zero-initial-scale` (false).
    pub allow_zero_initial_scale: bool,
    /// `min-scale` (0).
    pub min_scale: i32,
    /// `max-scale` (0 = unbounded).
    pub max_scale: i32,
    /// `max-scale-limit` (0 = no limit).
    pub max_scale_limit: i32,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            enable_scale_to_zero: true,
            pod_autoscaler_class: KPA_CLASS.to_owned(),
            container_concurrency_target_fraction: 0.7,
            container_concurrency_target_default: 100.0,
            rps_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
            activator_capacity: 100.0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
        }
    }
}

/// Reads typed values out of a string map, naming the key on error.
struct Reader<'a> {
    data: &'a BTreeMap<String, String>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(|v| v.trim())
    }

    fn float(&self, key: &str, into: &mut f64) -> Result<(), AutoscalingError> {
        if let Some(v) = self.get(key) {
            *into = v
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| error(key, v, "expected a number"))?;
        }
        Ok(())
    }

    fn int(&self, key: &str, into: &mut i32) -> Result<(), AutoscalingError> {
        if let Some(v) = self.get(key) {
            *into = v
                .parse()
                .map_err(|_| error(key, v, "expected an integer"))?;
        }
        Ok(())
    }

    fn bool(&self, key: &str, into: &mut bool) -> Result<(), AutoscalingError> {
        if let Some(v) = self.get(key) {
            // Go's strconv.ParseBool.
            *into = match v {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                _ => return Err(error(key, v, "expected true or false")),
            };
        }
        Ok(())
    }

    fn duration(&self, key: &str, into: &mut Duration) -> Result<(), AutoscalingError> {
        if let Some(v) = self.get(key) {
            *into = duration::parse_go(v).map_err(|e| error(key, v, e.reason()))?;
        }
        Ok(())
    }
}

fn whole_seconds(d: Duration) -> bool {
    d.subsec_nanos() == 0
}

/// Formats a duration as Go does, for error messages.
fn go(d: Duration) -> String {
    duration::format_go(d)
}

impl AutoscalerConfig {
    /// Reads `config-autoscaler`'s `data`; unknown keys are ignored.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, AutoscalingError> {
        let r = Reader { data };
        let mut c = AutoscalerConfig::default();
        r.bool("enable-scale-to-zero", &mut c.enable_scale_to_zero)?;
        if let Some(class) = r.get("pod-autoscaler-class") {
            c.pod_autoscaler_class = class.to_owned();
        }
        let mut pct = 70.0;
        r.float("container-concurrency-target-percentage", &mut pct)?;
        // Values in (0, 1] are read as fractions, for legacy configurations.
        c.container_concurrency_target_fraction = if pct > 1.0 { pct / 100.0 } else { pct };
        r.float(
            "container-concurrency-target-default",
            &mut c.container_concurrency_target_default,
        )?;
        r.float(
            "requests-per-second-target-default",
            &mut c.rps_target_default,
        )?;
        r.float("target-burst-capacity", &mut c.target_burst_capacity)?;
        r.duration("stable-window", &mut c.stable_window)?;
        r.float("panic-window-percentage", &mut c.panic_window_percentage)?;
        r.float(
            "panic-threshold-percentage",
            &mut c.panic_threshold_percentage,
        )?;
        r.float("max-scale-up-rate", &mut c.max_scale_up_rate)?;
        r.float("max-scale-down-rate", &mut c.max_scale_down_rate)?;
        r.duration(
            "scale-to-zero-grace-period",
            &mut c.scale_to_zero_grace_period,
        )?;
        r.duration(
            "scale-to-zero-pod-retention-period",
            &mut c.scale_to_zero_pod_retention_period,
        )?;
        r.duration("scale-down-delay", &mut c.scale_down_delay)?;
        r.float("activator-capacity", &mut c.activator_capacity)?;
        r.int("initial-scale", &mut c.initial_scale)?;
        r.bool("allow-zero-initial-scale", &mut c.allow_zero_initial_scale)?;
        r.int("min-scale", &mut c.min_scale)?;
        r.int("max-scale", &mut c.max_scale)?;
        r.int("max-scale-limit", &mut c.max_scale_limit)?;
        c.validate()?;
        Ok(c)
    }

    /// Upstream's checks of a complete configuration.
    pub fn validate(&self) -> Result<(), AutoscalingError> {
        let c = self;
        if c.scale_to_zero_grace_period.is_zero() {
            return Err(error(
                "scale-to-zero-grace-period",
                go(c.scale_to_zero_grace_period),
                "must be positive",
            ));
        }
        if !whole_seconds(c.scale_down_delay) {
            return Err(error(
                "scale-down-delay",
                go(c.scale_down_delay),
                "must be whole seconds",
            ));
        }
        if c.target_burst_capacity < 0.0 && c.target_burst_capacity != -1.0 {
            return Err(error(
                "target-burst-capacity",
                c.target_burst_capacity,
                "must be either non-negative or -1 (for unlimited)",
            ));
        }
        let fraction = c.container_concurrency_target_fraction;
        if fraction <= 0.0 || fraction > 1.0 {
            return Err(error(
                "container-concurrency-target-percentage",
                fraction * 100.0,
                "must be in (0, 100]",
            ));
        }
        let target = fraction * c.container_concurrency_target_default;
        if target < TARGET_MIN {
            return Err(error(
                "container-concurrency-target-default",
                c.container_concurrency_target_default,
                format!(
                    "with the target percentage this gives a target concurrency of {target}, less than {TARGET_MIN}"
                ),
            ));
        }
        if c.rps_target_default < TARGET_MIN {
            return Err(error(
                "requests-per-second-target-default",
                c.rps_target_default,
                format!("must be at least {TARGET_MIN}"),
            ));
        }
        if c.activator_capacity < 1.0 {
            return Err(error(
                "activator-capacity",
                c.activator_capacity,
                "must be at least 1",
            ));
        }
        if c.max_scale_up_rate <= 1.0 {
            return Err(error(
                "max-scale-up-rate",
                c.max_scale_up_rate,
                "must be greater than 1.0",
            ));
        }
        if c.max_scale_down_rate <= 1.0 {
            return Err(error(
                "max-scale-down-rate",
                c.max_scale_down_rate,
                "must be greater than 1.0",
            ));
        }
        if c.stable_window < WINDOW_MIN
            || c.stable_window > WINDOW_MAX
            || !whole_seconds(c.stable_window)
        {
            return Err(error(
                "stable-window",
                go(c.stable_window),
                format!(
                    "must be whole seconds in [{}, {}]",
                    go(WINDOW_MIN),
                    go(WINDOW_MAX)
                ),
            ));
        }
        // The panic window's 1 s floor is applied where it is computed.
        if !(1.0..=100.0).contains(&c.panic_window_percentage) {
            return Err(error(
                "panic-window-percentage",
                c.panic_window_percentage,
                "must be in [1, 100]",
            ));
        }
        if c.initial_scale < 0 || (c.initial_scale == 0 && !c.allow_zero_initial_scale) {
            return Err(error(
                "initial-scale",
                c.initial_scale,
                "must be at least 0 (or at least 1 when allow-zero-initial-scale is false)",
            ));
        }
        if c.max_scale_limit < 0 {
            return Err(error(
                "max-scale-limit",
                c.max_scale_limit,
                "must not be negative",
            ));
        }
        // With a limit, revisions may not be unbounded.
        let min_max_scale = i32::from(c.max_scale_limit > 0);
        if c.max_scale < min_max_scale || (c.max_scale_limit > 0 && c.max_scale > c.max_scale_limit)
        {
            return Err(error(
                "max-scale",
                c.max_scale,
                format!(
                    "must be in [0, {}] (0 = unbounded unless max-scale-limit is set)",
                    c.max_scale_limit
                ),
            ));
        }
        if c.min_scale < 0 || (c.max_scale > 0 && c.min_scale > c.max_scale) {
            return Err(error(
                "min-scale",
                c.min_scale,
                format!("must be in [0, max-scale={}]", c.max_scale),
            ));
        }
        Ok(())
    }
}

/// A revision's `autoscaling.knative.dev/*` annotations, parsed and checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annotations {
    /// `metric`.
    pub metric: Option<Metric>,
    /// `target`.
    pub target: Option<f64>,
    /// `target-utilization-percentage`, as a fraction.
    pub target_utilization: Option<f64>,
    /// `target-burst-capacity`.
    pub target_burst_capacity: Option<f64>,
    /// `window` (the stable window).
    pub window: Option<Duration>,
    /// `panic-window-percentage`.
    pub panic_window_percentage: Option<f64>,
    /// `panic-threshold-percentage`.
    pub panic_threshold_percentage: Option<f64>,
    /// `min-scale`.
    pub min_scale: Option<i32>,
    /// `max-scale`.
    pub max_scale: Option<i32>,
    /// `initial-scale`.
    pub initial_scale: Option<i32>,
    /// `activation-scale`.
    pub activation_scale: Option<i32>,
    /// `scale-down-delay`.
    pub scale_down_delay: Option<Duration>,
    /// `scale-to-zero-pod-retention-period`.
    pub scale_to_zero_pod_retention_period: Option<Duration>,
}

const PREFIX: &str = crate::api::keys::AUTOSCALING_PREFIX;

/// The value of annotation `name` (kebab-case) or its legacy camelCase alias.
impl Annotations {
    /// Checks the annotations against the cluster's limits in
    /// `config-autoscaler`, as upstream's webhook does: `max-scale` (and
    /// `min-scale`) at most `max-scale-limit` when a limit is set, where
    /// `max-scale: 0` (unlimited) is refused; `initial-scale: 0` only with
    /// `allow-zero-initial-scale`.
    pub fn check_cluster_limits(
        annotations: &BTreeMap<String, String>,
        config: &AutoscalerConfig,
    ) -> Result<(), AutoscalingError> {
        let limit = config.max_scale_limit;
        if limit > 0 {
            if let Some((key, max)) = parse_int(annotations, "max-scale")? {
                if max == 0 {
                    return Err(error(
                        &key,
                        max,
                        format!(
                            "0 (unlimited) is not allowed: the cluster's max-scale-limit is {limit}"
                        ),
                    ));
                }
                if max > limit {
                    return Err(error(
                        &key,
                        max,
                        format!("must be at most the cluster's max-scale-limit, {limit}"),
                    ));
                }
            }
            if let Some((key, min)) = parse_int(annotations, "min-scale")?
                && min > limit
            {
                return Err(error(
                    &key,
                    min,
                    format!("must be at most the cluster's max-scale-limit, {limit}"),
                ));
            }
        }
        if let Some((key, 0)) = parse_int(annotations, "initial-scale")?
            && !config.allow_zero_initial_scale
        {
            return Err(error(
                &key,
                0,
                "0 is not allowed: the cluster does not set allow-zero-initial-scale",
            ));
        }
        Ok(())
    }
}

fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<(String, &'a str)> {
    let key = format!("{PREFIX}{name}");
    if let Some(v) = annotations.get(&key) {
        return Some((key, v.trim()));
    }
    let mut camel = String::with_capacity(name.len());
    let mut upper = false;
    for ch in name.chars() {
        if ch == '-' {
            upper = true;
        } else if upper {
            camel.extend(ch.to_uppercase());
            upper = false;
        } else {
            camel.push(ch);
        }
    }
    let alias = format!("{PREFIX}{camel}");
    annotations.get(&alias).map(|v| (alias, v.trim()))
}

fn parse_float(
    annotations: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<(String, f64)>, AutoscalingError> {
    match annotation(annotations, name) {
        None => Ok(None),
        Some((key, v)) => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| Some((key.clone(), f)))
            .ok_or_else(|| error(&key, v, "expected a number")),
    }
}

fn parse_int(
    annotations: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<(String, i32)>, AutoscalingError> {
    match annotation(annotations, name) {
        None => Ok(None),
        Some((key, v)) => v
            .parse::<i32>()
            .map(|n| Some((key.clone(), n)))
            .map_err(|_| error(&key, v, "expected an integer")),
    }
}

fn parse_duration(
    annotations: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<(String, Duration)>, AutoscalingError> {
    match annotation(annotations, name) {
        None => Ok(None),
        Some((key, v)) => duration::parse_go(v)
            .map(|d| Some((key.clone(), d)))
            .map_err(|e| error(&key, v, e.reason())),
    }
}

impl Annotations {
    /// Reads and checks the autoscaling annotations of a revision.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, AutoscalingError> {
        let mut a = Annotations::default();
        if let Some((key, v)) = annotation(annotations, "metric") {
            a.metric = Some(match v {
                "concurrency" => Metric::Concurrency,
                "rps" => Metric::Rps,
                _ => return Err(error(&key, v, "expected concurrency or rps")),
            });
        }
        if let Some((key, t)) = parse_float(annotations, "target")? {
            if t < TARGET_MIN {
                return Err(error(&key, t, format!("must be at least {TARGET_MIN}")));
            }
            a.target = Some(t);
        }
        if let Some((key, p)) = parse_float(annotations, "target-utilization-percentage")? {
            if !(1.0..=100.0).contains(&p) {
                return Err(error(&key, p, "must be in [1, 100]"));
            }
            a.target_utilization = Some(p / 100.0);
        }
        if let Some((key, t)) = parse_float(annotations, "target-burst-capacity")? {
            if t < 0.0 && t != -1.0 {
                return Err(error(
                    &key,
                    t,
                    "must be either non-negative or -1 (for unlimited)",
                ));
            }
            a.target_burst_capacity = Some(t);
        }
        if let Some((key, w)) = parse_duration(annotations, "window")? {
            if w < WINDOW_MIN || w > WINDOW_MAX || !whole_seconds(w) {
                return Err(error(
                    &key,
                    go(w),
                    format!(
                        "must be whole seconds in [{}, {}]",
                        go(WINDOW_MIN),
                        go(WINDOW_MAX)
                    ),
                ));
            }
            a.window = Some(w);
        }
        if let Some((key, p)) = parse_float(annotations, "panic-window-percentage")? {
            if !(1.0..=100.0).contains(&p) {
                return Err(error(&key, p, "must be in [1, 100]"));
            }
            a.panic_window_percentage = Some(p);
        }
        if let Some((key, p)) = parse_float(annotations, "panic-threshold-percentage")? {
            if !(110.0..=1000.0).contains(&p) {
                return Err(error(&key, p, "must be in [110, 1000]"));
            }
            a.panic_threshold_percentage = Some(p);
        }
        for (name, slot) in [
            ("min-scale", &mut a.min_scale),
            ("max-scale", &mut a.max_scale),
            ("initial-scale", &mut a.initial_scale),
        ] {
            if let Some((key, n)) = parse_int(annotations, name)? {
                if n < 0 {
                    return Err(error(&key, n, "must not be negative"));
                }
                *slot = Some(n);
            }
        }
        if let (Some(min), Some(max)) = (a.min_scale, a.max_scale)
            && max != 0
            && min > max
        {
            return Err(error(
                &format!("{PREFIX}min-scale"),
                min,
                format!("must not be greater than max-scale={max}"),
            ));
        }
        if let Some((key, n)) = parse_int(annotations, "activation-scale")? {
            let within_max = a.max_scale.is_none_or(|max| max == 0 || n <= max);
            if n < 2 || n < a.min_scale.unwrap_or(0) || !within_max {
                return Err(error(
                    &key,
                    n,
                    "must be at least 2 and between min-scale and max-scale",
                ));
            }
            a.activation_scale = Some(n);
        }
        if let Some((key, d)) = parse_duration(annotations, "scale-down-delay")? {
            if d > WINDOW_MAX || !whole_seconds(d) {
                return Err(error(
                    &key,
                    go(d),
                    format!("must be whole seconds in [0s, {}]", go(WINDOW_MAX)),
                ));
            }
            a.scale_down_delay = Some(d);
        }
        if let Some((key, d)) = parse_duration(annotations, "scale-to-zero-pod-retention-period")? {
            if d > WINDOW_MAX {
                return Err(error(
                    &key,
                    go(d),
                    format!("must be in [0s, {}]", go(WINDOW_MAX)),
                ));
            }
            a.scale_to_zero_pod_retention_period = Some(d);
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = AutoscalerConfig::from_config_map(&BTreeMap::new()).expect("defaults are valid");
        assert_eq!(c, AutoscalerConfig::default());
        assert_eq!(c.container_concurrency_target_fraction, 0.7);
        assert_eq!(c.target_burst_capacity, 211.0);
        assert_eq!(c.stable_window, Duration::from_secs(60));
        assert_eq!(c.scale_to_zero_grace_period, Duration::from_secs(30));
    }

    #[test]
    fn upstream_accepts_short_stable_windows_go_booleans_and_sub_second_grace() {
        for pairs in [
            &[("stable-window", "6s")][..],
            &[("panic-window-percentage", "1")][..],
            &[("enable-scale-to-zero", "1")][..],
            &[("enable-scale-to-zero", "F")][..],
            &[("scale-to-zero-grace-period", "500ms")][..],
            &[("max-scale-limit", "10"), ("max-scale", "5")][..],
        ] {
            assert!(
                AutoscalerConfig::from_config_map(&map(pairs)).is_ok(),
                "{pairs:?}"
            );
        }
        assert!(
            AutoscalerConfig::from_config_map(&map(&[("enable-scale-to-zero", "tRuE")])).is_err()
        );
    }

    #[test]
    fn target_percentages_of_at_most_one_are_fractions() {
        let c = AutoscalerConfig::from_config_map(&map(&[(
            "container-concurrency-target-percentage",
            "0.5",
        )]))
        .expect("valid");
        assert_eq!(c.container_concurrency_target_fraction, 0.5);
        let c = AutoscalerConfig::from_config_map(&map(&[(
            "container-concurrency-target-percentage",
            "80",
        )]))
        .expect("valid");
        assert_eq!(c.container_concurrency_target_fraction, 0.8);
    }

    #[test]
    fn invalid_config_values_name_the_key() {
        let cases = [
            ("stable-window", "5s", "stable-window: invalid value \"5s\""),
            (
                "stable-window",
                "61.5s",
                "stable-window: invalid value \"1m1.5s\"",
            ),
            (
                "max-scale-up-rate",
                "1",
                "max-scale-up-rate: invalid value \"1\": must be greater than 1.0",
            ),
            ("max-scale-down-rate", "0.5", "max-scale-down-rate"),
            (
                "target-burst-capacity",
                "-2",
                "must be either non-negative or -1",
            ),
            (
                "container-concurrency-target-percentage",
                "101",
                "must be in (0, 100]",
            ),
            ("panic-window-percentage", "0.5", "must be in [1, 100]"),
            ("max-scale-limit", "10", "max-scale"),
            ("scale-to-zero-grace-period", "0s", "must be positive"),
            ("scale-down-delay", "1.5s", "must be whole seconds"),
            ("initial-scale", "0", "allow-zero-initial-scale"),
            ("enable-scale-to-zero", "maybe", "expected true or false"),
            ("activator-capacity", "0.5", "activator-capacity"),
        ];
        for (key, value, want) in cases {
            let err = AutoscalerConfig::from_config_map(&map(&[(key, value)])).expect_err(key);
            assert!(err.to_string().contains(want), "{key}={value}: {err}");
        }
        let c = AutoscalerConfig::from_config_map(&map(&[
            ("initial-scale", "0"),
            ("allow-zero-initial-scale", "true"),
        ]));
        assert!(c.is_ok());
    }

    #[test]
    fn annotations_accept_kebab_and_legacy_camel_case_keys() {
        let a = Annotations::parse(&map(&[
            ("autoscaling.knative.dev/minScale", "2"),
            ("autoscaling.knative.dev/max-scale", "10"),
            (
                "autoscaling.knative.dev/target-utilization-percentage",
                "80",
            ),
            ("autoscaling.knative.dev/window", "40s"),
            ("autoscaling.knative.dev/metric", "rps"),
        ]))
        .expect("valid");
        assert_eq!(a.min_scale, Some(2));
        assert_eq!(a.max_scale, Some(10));
        assert_eq!(a.target_utilization, Some(0.8));
        assert_eq!(a.window, Some(Duration::from_secs(40)));
        assert_eq!(a.metric, Some(Metric::Rps));
    }

    #[test]
    fn invalid_annotations_name_the_key() {
        let cases = [
            ("autoscaling.knative.dev/target", "0.001"),
            ("autoscaling.knative.dev/window", "5s"),
            ("autoscaling.knative.dev/panic-threshold-percentage", "100"),
            ("autoscaling.knative.dev/activation-scale", "1"),
            ("autoscaling.knative.dev/target-burst-capacity", "-5"),
            ("autoscaling.knative.dev/metric", "cpu"),
            ("autoscaling.knative.dev/scale-down-delay", "2h"),
            ("autoscaling.knative.dev/min-scale", "-1"),
        ];
        for (key, value) in cases {
            let err = Annotations::parse(&map(&[(key, value)])).expect_err(key);
            assert!(err.to_string().starts_with(key), "{err}");
        }
        let err = Annotations::parse(&map(&[
            ("autoscaling.knative.dev/min-scale", "5"),
            ("autoscaling.knative.dev/max-scale", "2"),
        ]))
        .expect_err("min > max");
        assert!(err.to_string().contains("max-scale=2"), "{err}");
    }
}
