//! `deploy/`: the compose stack, the Kubernetes manifests and the systemd unit, none of which
//! can run here (no container engine, no cluster, no systemd as init), so each is parsed and
//! held to the code: the Tollgate configs they mount pass `tollgate check` laid out as they
//! mount them and with only the environment they provide; their ports, probe paths, metric
//! names, ClickHouse tables and datasource uids are the ones the code and dashboards use;
//! their stop timeouts outlast a graceful shutdown; Prometheus' config passes promtool and the
//! unit passes `systemd-analyze verify`.

use crate::common::*;
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

const COMPOSE: &str = "deploy/compose/docker-compose.yaml";
const DEPLOYMENT: &str = "deploy/kubernetes/deployment.yaml";
const KUSTOMIZATION: &str = "deploy/kubernetes/kustomization.yaml";
const UNIT: &str = "deploy/systemd/tollgate.service";
const UNIT_ENV: &str = "deploy/systemd/tollgate.env";
const PROMETHEUS: &str = "deploy/compose/prometheus/prometheus.yml";
const GRAFANA_DATASOURCES: &str = "deploy/compose/grafana/provisioning/datasources/tollgate.yaml";
const GRAFANA_DASHBOARDS: &str = "deploy/compose/grafana/provisioning/dashboards/tollgate.yaml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: impl AsRef<Path>) -> Value {
    let rel = rel.as_ref();
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Every file under `dir` (relative to the repository), recursively, as repository paths.
fn files_under(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out.into_iter()
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect()
}

/// The YAML and JSON files of `deploy/` and `dashboards/`.
fn structured_files() -> Vec<PathBuf> {
    let mut files = files_under("deploy");
    files.extend(files_under("dashboards"));
    files.retain(|p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
    });
    files
}

/// The value after `flag` in an argument list.
fn flag_value<'a>(args: impl IntoIterator<Item = &'a str>, flag: &str) -> Option<&'a str> {
    let mut args = args.into_iter();
    args.by_ref().find(|a| *a == flag)?;
    args.next()
}

/// A Tollgate config as it is installed: files placed at the absolute paths the deployment
/// gives them, re-rooted under a temporary directory.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        Layout {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A compose service's bind mounts, each where the service sees it.
    fn of_compose_service(service: &Value) -> Layout {
        let layout = Layout::new();
        for (source, installed) in compose_binds(service) {
            layout.place(&source, &installed);
        }
        layout
    }

    fn at(&self, installed: &str) -> PathBuf {
        self.dir.path().join(installed.trim_start_matches('/'))
    }

    /// Places the repository's file or directory `source` at `installed`.
    fn place(&self, source: &Path, installed: &str) {
        let target = self.at(installed);
        let source = root().join(source);
        if source.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            for entry in std::fs::read_dir(&source).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
            }
        } else {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&source, &target).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        }
    }

    /// `tollgate check` on the config installed at `config`, with only the variables `env`
    /// names set (to dummy values): what the deployment does not provide stays unset.
    fn check(&self, config: &str, env: &BTreeSet<String>) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["check", "--config"])
            .arg(self.at(config))
            .env_clear()
            .envs(env.iter().map(|k| (k, "dummy-value")))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

/// A Tollgate config file, as the test needs it: its listeners and environment variables.
struct Config {
    listen: SocketAddr,
    admin: SocketAddr,
    grace_secs: u64,
    data_dir: String,
    env_vars: BTreeSet<String>,
    clickhouse_db: Option<String>,
    value: Value,
}

impl Config {
    fn load(rel: &Path) -> Config {
        let value = yaml(rel);
        let addr = |key: &str| -> SocketAddr {
            str_of(&value[key], key)
                .parse()
                .unwrap_or_else(|e| panic!("{}: {key}: {e}", rel.display()))
        };
        let mut env_vars = BTreeSet::new();
        collect_env_names(&value, &mut env_vars);
        Config {
            listen: addr("listen"),
            admin: addr("admin_listen"),
            grace_secs: value["server"]["grace_period_secs"].as_u64().unwrap_or(10),
            data_dir: str_of(&value["data_dir"], "data_dir").to_string(),
            env_vars,
            clickhouse_db: value["telemetry"]["clickhouse"]["database"]
                .as_str()
                .map(str::to_string),
            value,
        }
    }
}

/// Every value of a `*_env` field: the environment variables a config reads.
fn collect_env_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(name) if k.ends_with("_env") => {
                        out.insert(name.to_string());
                    }
                    _ => collect_env_names(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_env_names(v, out)),
        _ => {}
    }
}

/// The compose file's services.
fn compose() -> Value {
    yaml(COMPOSE)
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_object(), "{COMPOSE}: no service {name}");
    service
}

/// A compose service's bind mounts as (repository path, path in the container).
fn compose_binds(service: &Value) -> Vec<(PathBuf, String)> {
    let compose_dir = Path::new(COMPOSE).parent().unwrap();
    list(&service["volumes"])
        .iter()
        .filter_map(|v| {
            let mut parts = str_of(v, "volume").split(':');
            let (host, container) = (parts.next()?, parts.next()?);
            host.starts_with('.')
                .then(|| (normalize(&compose_dir.join(host)), container.to_string()))
        })
        .collect()
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The repository file mounted at `container` in a compose service.
fn compose_source(service: &Value, container: &str) -> PathBuf {
    compose_binds(service)
        .into_iter()
        .find(|(_, c)| c == container)
        .map(|(host, _)| host)
        .unwrap_or_else(|| panic!("{COMPOSE}: nothing is mounted at {container}"))
}

fn compose_env(service: &Value) -> BTreeSet<String> {
    service["environment"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn compose_tollgate_config(compose: &Value) -> (String, Config) {
    let tollgate = compose_service(compose, "tollgate");
    let args = list(&tollgate["command"])
        .iter()
        .map(|a| str_of(a, "command"));
    let installed = flag_value(args, "--config").expect("tollgate command has --config");
    let source = compose_source(tollgate, installed);
    (installed.to_string(), Config::load(&source))
}

fn k8s_container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn k8s_container_ports(container: &Value) -> BTreeMap<String, u16> {
    list(&container["ports"])
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name").to_string(),
                p["containerPort"].as_u64().unwrap() as u16,
            )
        })
        .collect()
}

/// The Kubernetes install: each ConfigMap's files (from kustomization.yaml's generators) at
/// the path the Deployment mounts it, and the installed config's path.
fn k8s_layout(layout: &Layout) -> String {
    let deployment = yaml(DEPLOYMENT);
    let kustomization = yaml(KUSTOMIZATION);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = k8s_container(&deployment);
    let mounts: BTreeMap<&str, &str> = list(&container["volumeMounts"])
        .iter()
        .map(|m| {
            (
                str_of(&m["name"], "mount"),
                str_of(&m["mountPath"], "mount"),
            )
        })
        .collect();
    let mut placed = 0;
    for volume in list(&pod["volumes"]) {
        let Some(map) = volume["configMap"]["name"].as_str() else {
            continue;
        };
        let generator = list(&kustomization["configMapGenerator"])
            .iter()
            .find(|g| g["name"] == map)
            .unwrap_or_else(|| panic!("{KUSTOMIZATION}: no configMapGenerator named {map}"));
        let mount = mounts[str_of(&volume["name"], "volume")];
        for file in list(&generator["files"]) {
            let file = Path::new(str_of(file, "file"));
            let source = normalize(&Path::new(KUSTOMIZATION).parent().unwrap().join(file));
            let name = file.file_name().unwrap().to_str().unwrap();
            layout.place(&source, &format!("{mount}/{name}"));
            placed += 1;
        }
    }
    assert!(placed > 1, "the Deployment mounts no generated ConfigMap");
    let args = list(&container["args"]).iter().map(|a| str_of(a, "args"));
    flag_value(args, "--config")
        .expect("the container's args have --config")
        .to_string()
}

fn k8s_config() -> Config {
    let deployment = yaml(DEPLOYMENT);
    let args = list(&k8s_container(&deployment)["args"])
        .iter()
        .map(|a| str_of(a, "args"));
    let installed = flag_value(args, "--config").unwrap();
    let name = Path::new(installed).file_name().unwrap();
    Config::load(&Path::new(KUSTOMIZATION).parent().unwrap().join(name))
}

fn k8s_env(deployment: &Value) -> BTreeSet<String> {
    list(&k8s_container(deployment)["env"])
        .iter()
        .map(|e| str_of(&e["name"], "env name").to_string())
        .collect()
}

/// The unit's `Key=value` lines (the last one of each key), comments left out.
fn unit() -> BTreeMap<String, String> {
    read(UNIT)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The repository config the unit's install notes put at the path its ExecStart reads.
fn systemd_config() -> (String, PathBuf) {
    let unit = unit();
    let installed = flag_value(unit["ExecStart"].split_whitespace(), "--config")
        .expect("ExecStart has --config")
        .to_string();
    let text = read(UNIT);
    let install = text
        .lines()
        .find(|l| l.starts_with('#') && l.contains("install ") && l.ends_with(&installed))
        .unwrap_or_else(|| panic!("{UNIT}: no install note puts a config at {installed}"));
    let source = install
        .split_whitespace()
        .find(|w| w.starts_with("deploy/"))
        .expect("the install note names a file of deploy/");
    (installed, PathBuf::from(source))
}

fn env_file_names(rel: &str) -> BTreeSet<String> {
    read(rel)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_string())
        .collect()
}

/// Seconds a stop may take at most: pingora serves on for the grace period, then gives the
/// requests in flight as long again (src/server.rs sets both from `grace_period_secs`), then
/// the ledger drains to ClickHouse within src/server.rs' `SINK_DRAIN_DEADLINE`.
fn longest_stop_secs(grace_secs: u64) -> u64 {
    let source = read("src/server.rs");
    let drain: u64 = Regex::new(r"SINK_DRAIN_DEADLINE: Duration = Duration::from_secs\((\d+)\)")
        .unwrap()
        .captures(&source)
        .expect("src/server.rs: SINK_DRAIN_DEADLINE in seconds")[1]
        .parse()
        .unwrap();
    assert!(source.contains("grace_period_seconds: Some(cfg.server.grace_period_secs)"));
    assert!(
        source.contains("graceful_shutdown_timeout_seconds: Some(cfg.server.grace_period_secs")
    );
    2 * grace_secs + drain
}

/// `45s`, `1min 30s`, `45` (seconds) as seconds.
fn duration_secs(text: &str) -> u64 {
    let part = Regex::new(r"(\d+)\s*(min|m|s)?").unwrap();
    part.captures_iter(text)
        .map(|c| {
            let n: u64 = c[1].parse().unwrap();
            match c.get(2).map(|m| m.as_str()) {
                Some("min" | "m") => n * 60,
                _ => n,
            }
        })
        .sum()
}

#[test]
fn every_yaml_and_json_file_parses() {
    let files = structured_files();
    for file in &files {
        let text = read(file);
        let parsed: Result<Value, String> = match file.extension().unwrap().to_str() {
            Some("json") => serde_json::from_str(&text).map_err(|e| e.to_string()),
            _ => serde_saphyr::from_str(&text).map_err(|e| e.to_string()),
        };
        let value = parsed.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(value.is_object(), "{}: not a mapping", file.display());
    }
    for expected in [
        COMPOSE,
        DEPLOYMENT,
        KUSTOMIZATION,
        PROMETHEUS,
        GRAFANA_DATASOURCES,
    ] {
        assert!(
            files.contains(&PathBuf::from(expected)),
            "{expected} missing"
        );
    }
}

#[test]
fn the_compose_config_passes_check_as_mounted_with_the_environment_compose_gives() {
    let compose = compose();
    let tollgate = compose_service(&compose, "tollgate");
    let layout = Layout::of_compose_service(tollgate);
    let (installed, config) = compose_tollgate_config(&compose);
    let env = compose_env(tollgate);
    let missing: Vec<_> = config.env_vars.difference(&env).collect();
    assert!(missing.is_empty(), "{COMPOSE} does not set {missing:?}");
    let (ok, out) = layout.check(&installed, &env);
    assert!(ok, "{out}");
    // Every key the compose file asks for is documented in .env.example.
    let example = env_file_names("deploy/compose/.env.example");
    let asked = Regex::new(r"\$\{(\w+)").unwrap();
    for var in asked.captures_iter(&read(COMPOSE)) {
        assert!(example.contains(&var[1]), ".env.example lacks {}", &var[1]);
    }
}

#[test]
fn the_kubernetes_config_passes_check_as_mounted_with_the_deployments_environment() {
    let deployment = yaml(DEPLOYMENT);
    let layout = Layout::new();
    let installed = k8s_layout(&layout);
    let env = k8s_env(&deployment);
    let config = k8s_config();
    let missing: Vec<_> = config.env_vars.difference(&env).collect();
    assert!(missing.is_empty(), "{DEPLOYMENT} does not set {missing:?}");
    let (ok, out) = layout.check(&installed, &env);
    assert!(ok, "{out}");

    // Replicas share ClickHouse, budgets included.
    assert_eq!(config.value["replicas"]["budgets"], "clickhouse");
    assert!(config.clickhouse_db.is_some());
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);

    // Every variable comes from the Secret under its own name, and the example Secret has
    // each of them.
    let secret = yaml("deploy/kubernetes/secret.example.yaml");
    for e in list(&k8s_container(&deployment)["env"]) {
        let from = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"], secret["metadata"]["name"], "{e}");
        assert_eq!(from["key"], e["name"], "{e}");
        let key = str_of(&e["name"], "env");
        assert!(
            secret["stringData"][key].is_string(),
            "example Secret lacks {key}"
        );
    }

    // The policies ConfigMap holds every file of policies/.
    let kustomization = read(KUSTOMIZATION);
    for file in files_under("policies") {
        let entry = format!("../../{}", file.display());
        assert!(
            kustomization.contains(&entry),
            "{KUSTOMIZATION} lacks {entry}"
        );
    }
}

#[test]
fn the_systemd_config_passes_check_with_the_env_file() {
    let (installed, source) = systemd_config();
    let layout = Layout::new();
    layout.place(&source, &installed);
    // The unit's install notes put the repository's policies/ beside the config directory.
    let config = Config::load(&source);
    if let Some(policies) = config.value["policies"].as_str() {
        let dir = normalize(&Path::new(&installed).parent().unwrap().join(policies));
        let note = format!("cp -r policies {}", dir.display());
        assert!(
            read(UNIT).contains(&note),
            "{UNIT}: no install note `{note}`"
        );
        layout.place(Path::new("policies"), dir.to_str().unwrap());
    }
    let env = env_file_names(UNIT_ENV);
    let missing: Vec<_> = config.env_vars.difference(&env).collect();
    assert!(missing.is_empty(), "{UNIT_ENV} does not set {missing:?}");
    let (ok, out) = layout.check(&installed, &env);
    assert!(ok, "{out}");

    // data_dir is the unit's state directory.
    let unit = unit();
    assert_eq!(
        config.data_dir,
        format!("/var/lib/{}", unit["StateDirectory"]),
        "data_dir is not the StateDirectory"
    );
}

#[test]
fn ports_match_the_configs_listeners() {
    let compose = compose();
    let (_, config) = compose_tollgate_config(&compose);
    let tollgate = compose_service(&compose, "tollgate");
    let (proxy, admin) = (config.listen.port(), config.admin.port());
    // Reachable from the other containers, and published.
    assert!(config.listen.ip().is_unspecified() && config.admin.ip().is_unspecified());
    let published: BTreeSet<u16> = list(&tollgate["ports"])
        .iter()
        .map(|p| {
            str_of(p, "port")
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(published, BTreeSet::from([proxy, admin]), "{COMPOSE} ports");
    let health = tollgate["healthcheck"]["test"].to_string();
    for path in ["/healthz", "/readyz"] {
        assert!(
            health.contains(&format!("127.0.0.1:{admin}{path}")),
            "compose healthcheck: {health}"
        );
    }
    let dockerfile = read("deploy/compose/Dockerfile");
    assert!(dockerfile.contains(&format!("EXPOSE {proxy} {admin}")));

    // Prometheus scrapes the admin port of the service by its compose name.
    let prometheus = yaml(PROMETHEUS);
    let targets: Vec<&str> = list(&prometheus["scrape_configs"])
        .iter()
        .flat_map(|s| list(&s["static_configs"]))
        .flat_map(|s| list(&s["targets"]))
        .map(|t| str_of(t, "target"))
        .collect();
    assert_eq!(targets, [format!("tollgate:{admin}")]);

    // Kubernetes: the container's named ports, the Service's, the probes' and the
    // ServiceMonitor's.
    let config = k8s_config();
    let deployment = yaml(DEPLOYMENT);
    let container = k8s_container(&deployment);
    let ports = k8s_container_ports(container);
    assert!(config.listen.ip().is_unspecified() && config.admin.ip().is_unspecified());
    assert_eq!(ports["proxy"], config.listen.port());
    assert_eq!(ports["admin"], config.admin.port());
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let service = yaml("deploy/kubernetes/service.yaml");
    let mut service_ports = BTreeMap::new();
    for p in list(&service["spec"]["ports"]) {
        let target = str_of(&p["targetPort"], "targetPort");
        assert_eq!(p["port"].as_u64().unwrap() as u16, ports[target]);
        service_ports.insert(str_of(&p["name"], "name").to_string(), target.to_string());
    }
    assert_eq!(service_ports.len(), 2);
    let monitor = yaml("deploy/kubernetes/servicemonitor.yaml");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(service_ports[str_of(&endpoint["port"], "port")], "admin");
    // The selectors pick the pods and the Service.
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], pod_labels);
    assert_eq!(&service["spec"]["selector"], pod_labels);
    assert_eq!(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    );
    let pdb = yaml("deploy/kubernetes/pdb.yaml");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], pod_labels);
    let hpa = yaml("deploy/kubernetes/hpa.yaml");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(2));
}

/// Every admin path the deployments call: probes, healthchecks, scrapes.
fn admin_paths() -> BTreeSet<String> {
    let deployment = yaml(DEPLOYMENT);
    let container = k8s_container(&deployment);
    let mut paths: BTreeSet<String> = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| str_of(&container[*p]["httpGet"]["path"], p).to_string())
        .collect();
    let monitor = yaml("deploy/kubernetes/servicemonitor.yaml");
    paths.insert(str_of(&monitor["spec"]["endpoints"][0]["path"], "path").to_string());
    let prometheus = yaml(PROMETHEUS);
    for scrape in list(&prometheus["scrape_configs"]) {
        paths.insert(str_of(&scrape["metrics_path"], "metrics_path").to_string());
    }
    let compose = compose();
    let (_, config) = compose_tollgate_config(&compose);
    let health = compose_service(&compose, "tollgate")["healthcheck"]["test"].to_string();
    let url = Regex::new(&format!(r":{}(/[a-z]+)", config.admin.port())).unwrap();
    paths.extend(url.captures_iter(&health).map(|c| c[1].to_string()));
    paths
}

#[tokio::test]
async fn every_probe_and_scrape_path_answers_200_on_a_real_admin_listener() {
    let paths = admin_paths();
    for expected in ["/healthz", "/readyz", "/metrics"] {
        assert!(paths.contains(expected), "no deployment calls {expected}");
    }
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    for path in &paths {
        let resp = client().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path} on the admin listener");
    }
}

/// Every metric name the code registers.
fn registered_metrics() -> BTreeSet<String> {
    let name = Regex::new(r#""(tollgate_[a-z0-9_]+)""#).unwrap();
    files_under("src")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .flat_map(|p| {
            let text = read(&p);
            name.captures_iter(&text)
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_metric_named_in_deploy_and_dashboards_is_registered_by_the_code() {
    let registered = registered_metrics();
    assert!(registered.contains("tollgate_requests_total"));
    let metric = Regex::new(r"\btollgate_[a-z0-9_]+").unwrap();
    let mut files = files_under("deploy");
    files.extend(files_under("dashboards"));
    let mut named = 0;
    for file in files {
        for m in metric.find_iter(&read(&file)) {
            let name = m.as_str();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| registered.contains(*f)))
                .unwrap_or(name);
            assert!(
                registered.contains(family),
                "{}: {name} is not a metric the code registers",
                file.display()
            );
            named += 1;
        }
    }
    assert!(named > 0);
}

/// Tables and views the migrations create.
fn migrated_tables() -> BTreeSet<String> {
    let create =
        Regex::new(r"CREATE (?:TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS \{db\}\.(\w+)").unwrap();
    files_under("src/sink/clickhouse/migrations")
        .into_iter()
        .flat_map(|p| {
            let text = read(&p);
            create
                .captures_iter(&text)
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every string under a `rawSql` key.
fn raw_sql<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(sql) if k == "rawSql" => out.push(sql),
                    _ => raw_sql(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| raw_sql(v, out)),
        _ => {}
    }
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    files_under("dashboards")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v = serde_json::from_str(&read(&p)).unwrap();
            (p, v)
        })
        .collect()
}

#[test]
fn clickhouse_database_and_tables_match_the_migrations() {
    let compose = compose();
    let (_, config) = compose_tollgate_config(&compose);
    let database = config
        .clickhouse_db
        .expect("the compose config ships to ClickHouse");
    let url = str_of(&config.value["telemetry"]["clickhouse"]["url"], "url");
    assert!(url.starts_with("http://clickhouse:"), "{url}");
    let clickhouse = compose_service(&compose, "clickhouse");
    assert_eq!(
        clickhouse["environment"]["CLICKHOUSE_DB"],
        database.as_str()
    );
    assert!(
        list(&clickhouse["volumes"])
            .iter()
            .any(|v| str_of(v, "volume").ends_with(":/var/lib/clickhouse")),
        "ClickHouse keeps its data in a named volume"
    );
    let datasources = yaml(GRAFANA_DATASOURCES);
    let ch = list(&datasources["datasources"])
        .iter()
        .find(|d| d["type"] == grafana_clickhouse())
        .expect("a ClickHouse datasource");
    assert_eq!(ch["jsonData"]["defaultDatabase"], database.as_str());
    assert_eq!(ch["jsonData"]["host"], "clickhouse");
    assert_eq!(k8s_config().clickhouse_db, Some(database.clone()));

    // Dashboards query the migrations' tables (in the datasource's default database).
    let tables = migrated_tables();
    assert!(tables.contains("requests"), "{tables:?}");
    let from = Regex::new(r"(?i)\b(?:from|join)\s+([a-z_][a-z0-9_.]*)").unwrap();
    for (file, dashboard) in dashboards() {
        let mut queries = Vec::new();
        raw_sql(&dashboard, &mut queries);
        for sql in queries {
            for c in from.captures_iter(sql) {
                let name = c[1].strip_prefix(&format!("{database}.")).unwrap_or(&c[1]);
                assert!(
                    tables.contains(name),
                    "{}: no migration creates {name}",
                    file.display()
                );
            }
        }
    }
}

fn grafana_clickhouse() -> &'static str {
    "grafana-clickhouse-datasource"
}

/// Every `"datasource"` object of a dashboard.
fn datasource_refs<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "datasource" && v.is_object() {
                    out.push(v);
                } else {
                    datasource_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| datasource_refs(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_provisions_the_datasources_and_dashboards_the_dashboards_use() {
    let compose = compose();
    let grafana = compose_service(&compose, "grafana");
    let env = &grafana["environment"];
    assert_eq!(env["GF_INSTALL_PLUGINS"], grafana_clickhouse());
    assert!(str_of(&grafana["image"], "image").starts_with("grafana/grafana:11"));

    let datasources = yaml(GRAFANA_DATASOURCES);
    let mut uids = BTreeSet::new();
    let mut types = BTreeSet::new();
    for d in list(&datasources["datasources"]) {
        assert!(uids.insert(str_of(&d["uid"], "uid").to_string()), "{d}");
        types.insert(str_of(&d["type"], "type").to_string());
    }
    assert!(types.contains(grafana_clickhouse()) && types.contains("prometheus"));
    let prometheus = list(&datasources["datasources"])
        .iter()
        .find(|d| d["type"] == "prometheus")
        .unwrap();
    let port = list(&compose_service(&compose, "prometheus")["ports"])
        .iter()
        .map(|p| str_of(p, "port").rsplit(':').next().unwrap().to_string())
        .next()
        .unwrap();
    assert_eq!(prometheus["url"], format!("http://prometheus:{port}"));
    // Variables the provisioning files expand are in Grafana's environment.
    let var = Regex::new(r"\$\{?([A-Z_][A-Z0-9_]*)").unwrap();
    for c in var.captures_iter(&read(GRAFANA_DATASOURCES)) {
        assert!(
            env[&c[1]].is_string(),
            "Grafana's environment lacks {}",
            &c[1]
        );
    }

    // The dashboards directory is mounted where the provider reads it.
    let provider = &yaml(GRAFANA_DASHBOARDS)["providers"][0];
    let mounted = compose_source(grafana, str_of(&provider["options"]["path"], "path"));
    assert_eq!(mounted, Path::new("dashboards"));
    let provisioning = compose_source(grafana, "/etc/grafana/provisioning");
    assert_eq!(
        provisioning,
        Path::new(GRAFANA_DATASOURCES).ancestors().nth(2).unwrap()
    );

    // Each dashboard names a provisioned uid, or a datasource variable of a provisioned type.
    for (file, dashboard) in dashboards() {
        let variables: BTreeMap<String, &Value> = list(&dashboard["templating"]["list"])
            .iter()
            .filter(|v| v["type"] == "datasource")
            .map(|v| (str_of(&v["name"], "name").to_string(), v))
            .collect();
        let mut refs = Vec::new();
        datasource_refs(&dashboard, &mut refs);
        for r in refs {
            let Some(uid) = r["uid"].as_str() else {
                continue;
            };
            if uid.starts_with("-- ") || uid == "grafana" {
                continue; // Grafana's built-in annotations and mixed sources
            }
            if let Some(name) = uid.strip_prefix("${").and_then(|u| u.strip_suffix('}')) {
                let variable = variables
                    .get(name)
                    .unwrap_or_else(|| panic!("{}: no variable {name}", file.display()));
                let kind = str_of(&variable["query"], "query");
                assert!(
                    types.contains(kind),
                    "{}: {kind} is not provisioned",
                    file.display()
                );
            } else {
                assert!(
                    uids.contains(uid),
                    "{}: uid {uid} is not provisioned",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn stop_timeouts_outlast_a_graceful_shutdown() {
    let compose = compose();
    let (_, config) = compose_tollgate_config(&compose);
    let compose_stop = str_of(
        &compose_service(&compose, "tollgate")["stop_grace_period"],
        "stop_grace_period",
    );
    let longest = longest_stop_secs(config.grace_secs);
    assert!(
        duration_secs(compose_stop) > longest,
        "{compose_stop} <= {longest}s"
    );

    let config = k8s_config();
    let deployment = yaml(DEPLOYMENT);
    let pod = &deployment["spec"]["template"]["spec"];
    let pre_stop = k8s_container(&deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let longest = pre_stop + longest_stop_secs(config.grace_secs);
    assert!(
        termination > longest,
        "terminationGracePeriodSeconds {termination} <= {longest}"
    );

    let (_, source) = systemd_config();
    let config = Config::load(&source);
    let unit = unit();
    let longest = longest_stop_secs(config.grace_secs);
    let stop = duration_secs(&unit["TimeoutStopSec"]);
    assert!(stop > longest, "TimeoutStopSec {stop} <= {longest}");
}

#[test]
fn redis_runs_under_its_profile_and_named_volumes_are_declared() {
    let compose = compose();
    let redis = compose_service(&compose, "redis");
    assert_eq!(redis["profiles"], serde_json::json!(["redis"]));
    for (name, service) in compose["services"].as_object().unwrap() {
        assert!(
            service["healthcheck"]["test"].is_array(),
            "{name} has no healthcheck"
        );
        if name != "redis" {
            assert!(
                service["profiles"].is_null(),
                "{name} runs only under a profile"
            );
        }
        for v in list(&service["volumes"]) {
            let source = str_of(v, "volume").split(':').next().unwrap();
            if !source.starts_with('.') && !source.starts_with('/') {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name}: volume {source} is not declared"
                );
            }
        }
    }

    // The compose config's commented Redis tier, uncommented, is valid and names the service.
    let tollgate = compose_service(&compose, "tollgate");
    let layout = Layout::of_compose_service(tollgate);
    let (installed, _) = compose_tollgate_config(&compose);
    let text = std::fs::read_to_string(layout.at(&installed)).unwrap();
    let commented = Regex::new(r"(?m)^(\s*)# (redis: \{ url: .redis://(\w+):6379/0. \})$").unwrap();
    let line = commented
        .captures(&text)
        .expect("the compose config has a commented Redis tier");
    assert_eq!(&line[3], "redis", "the Redis tier names the redis service");
    let uncommented = commented.replace(&text, "$1$2");
    std::fs::write(layout.at(&installed), uncommented.as_ref()).unwrap();
    let (ok, out) = layout.check(&installed, &compose_env(tollgate));
    assert!(ok, "{out}");
}

#[test]
fn the_image_is_built_from_repository_files_the_context_sends_and_runs_unprivileged() {
    let dockerfile = read("deploy/compose/Dockerfile");
    let ignore = read("deploy/compose/Dockerfile.dockerignore");
    let sent: BTreeSet<&str> = ignore.lines().filter_map(|l| l.strip_prefix('!')).collect();
    let mut copied = 0;
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(root().join(source).exists(), "COPY {source}: no such file");
            assert!(
                sent.contains(source),
                "COPY {source}: left out of the context"
            );
            copied += 1;
        }
    }
    assert!(copied >= 4, "{dockerfile}");
    let runtime = dockerfile.rsplit("FROM ").next().unwrap();
    assert!(runtime.starts_with("debian:") && runtime.contains("-slim"));
    assert!(
        runtime.contains("\nUSER tollgate"),
        "the runtime image runs as root"
    );
}

#[test]
fn promtool_checks_the_compose_prometheus_config_with_its_mounted_rules() {
    let compose = compose();
    let layout = Layout::of_compose_service(compose_service(&compose, "prometheus"));
    // Absolute paths in the config point into the layout.
    let config = read(PROMETHEUS).replace(
        "/etc/prometheus/",
        &format!("{}/", layout.at("/etc/prometheus").display()),
    );
    let path = layout.at("/etc/prometheus/checked.yml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool could not run ({e}): install it with `scripts/promtool.sh install`")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 1 rule files found"), "{text}");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let unit = unit();
    assert!(unit["ExecReload"].contains("-HUP $MAINPID"));
    assert_eq!(unit["Restart"], "on-failure");
    assert!(unit.get("DynamicUser").is_some_and(|v| v == "yes") || unit.contains_key("User"));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tollgate.service");
    let text = read(UNIT).replace("/usr/local/bin/tollgate", env!("CARGO_BIN_EXE_tollgate"));
    std::fs::write(&copy, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze could not run ({e}): apt-get install systemd"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, and says so on stderr.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}
