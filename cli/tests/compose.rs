//! What users read and run without the code: `docker-compose.yml`, checked
//! by reading it since no Docker engine runs here (every canotify service
//! runs a binary of this workspace, and every variable it sets is one that
//! binary reads), and the README's configuration tables.

use std::collections::{BTreeMap, HashSet};

use clap::CommandFactory;
use serde::Deserialize;

#[derive(Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
}

#[derive(Deserialize)]
struct Service {
    image: Option<String>,
    build: Option<serde_yaml_ng::Value>,
    command: Option<Vec<String>>,
    #[serde(default)]
    environment: BTreeMap<String, serde_yaml_ng::Value>,
    deploy: Option<Deploy>,
}

#[derive(Deserialize)]
struct Deploy {
    replicas: Option<u32>,
}

fn compose() -> Compose {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .expect("docker-compose.yml sits at the workspace root");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml is valid YAML of the compose shape")
}

/// The environment variables a binary's command line reads.
fn accepted(binary: &str) -> Option<HashSet<String>> {
    let command = match binary {
        "canotify-producer" => canotify_producer::ProducerConfig::command(),
        "canotify-worker" => canotify_worker::WorkerConfig::command(),
        "canotify-writer" => canotify_writer::WriterConfig::command(),
        "canotify-simulators" => canotify_simulators::config::SimulatorConfig::command(),
        _ => return None,
    };
    Some(
        command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .collect(),
    )
}

#[test]
fn every_variable_compose_sets_is_read_by_the_binary_it_is_given_to() {
    let compose = compose();
    let mut checked = 0;

    for (name, service) in &compose.services {
        if service.build.is_none() {
            continue;
        }
        let binary = service
            .command
            .as_ref()
            .and_then(|c| c.first())
            .unwrap_or_else(|| panic!("service {name} builds the image but names no binary"));
        let accepted = accepted(binary).unwrap_or_else(|| {
            panic!("service {name} runs {binary}, which this workspace does not build")
        });
        for variable in service.environment.keys() {
            assert!(
                accepted.contains(variable),
                "service {name} sets {variable}, which {binary} does not read"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "producer, worker, writer and simulators");
}

#[test]
fn compose_runs_the_whole_stack_with_several_workers() {
    let compose = compose();

    for service in [
        "rabbitmq",
        "postgres",
        "simulators",
        "producer",
        "worker",
        "writer",
    ] {
        assert!(
            compose.services.contains_key(service),
            "{service} is missing"
        );
    }
    assert!(
        compose.services["rabbitmq"]
            .image
            .as_deref()
            .is_some_and(|i| i.contains("management"))
    );
    let replicas = compose.services["worker"]
        .deploy
        .as_ref()
        .and_then(|d| d.replicas);
    assert!(
        replicas.is_some_and(|n| n > 1),
        "the worker runs several replicas"
    );
}

#[test]
fn every_worker_requirement_is_set_by_compose() {
    let compose = compose();
    let worker = &compose.services["worker"];
    let required: Vec<String> = canotify_worker::WorkerConfig::command()
        .get_arguments()
        .filter(|arg| arg.is_required_set())
        .filter_map(|arg| arg.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();

    assert!(!required.is_empty());
    for variable in required {
        assert!(
            worker.environment.contains_key(&variable),
            "worker needs {variable}"
        );
    }
}

#[test]
fn the_simulators_listen_where_the_worker_is_told_to_look() {
    let compose = compose();
    let env = |service: &str, key: &str| {
        compose.services[service].environment[key]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let port = |listen: String| listen.rsplit(':').next().unwrap().to_owned();

    assert!(
        env("worker", "CANOTIFY_TWILIO_URL")
            .ends_with(&port(env("simulators", "SIM_TWILIO_LISTEN")))
    );
    assert!(
        env("worker", "CANOTIFY_VERIFICATION_URL")
            .ends_with(&port(env("simulators", "SIM_VERIFICATION_LISTEN")))
    );
    assert_eq!(
        env("worker", "CANOTIFY_TWILIO_AUTH_TOKEN"),
        env("simulators", "SIM_TWILIO_AUTH_TOKEN")
    );
    assert_eq!(
        env("worker", "CANOTIFY_VERIFICATION_API_KEY"),
        env("simulators", "SIM_VERIFICATION_API_KEY")
    );
}

#[test]
fn the_readme_documents_every_variable_each_binary_reads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();

    for binary in [
        "canotify-producer",
        "canotify-worker",
        "canotify-writer",
        "canotify-simulators",
    ] {
        for variable in accepted(binary).unwrap() {
            assert!(
                readme.contains(&format!("`{variable}`")),
                "README lacks {variable} of {binary}"
            );
        }
    }
}
