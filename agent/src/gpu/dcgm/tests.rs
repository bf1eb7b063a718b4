use super::*;

const FIXTURE: &str = include_str!("../testdata/dcgm-exporter.prom");
const GPU0: &str = "GPU-5fa4c8a2-3b1e-7d4c-9e0f-1a2b3c4d5e6f";

#[test]
fn parses_the_recorded_exposition() {
    let p = parse_text(FIXTURE);
    assert_eq!(p.bad_lines, 0);
    let s = p
        .samples
        .iter()
        .find(|s| s.name == "DCGM_FI_PROF_DRAM_ACTIVE" && s.label("gpu") == Some("0"))
        .unwrap();
    assert_eq!(s.value, 0.615833);
    assert_eq!(s.label("UUID"), Some(GPU0));
    assert_eq!(s.label("modelName"), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!(s.label("pod"), Some("vllm-llama-8b-6d9f7c5b8-xk2p4"));
    let e = p
        .samples
        .iter()
        .find(|s| s.name == "DCGM_FI_DEV_XID_ERRORS")
        .unwrap();
    assert_eq!(e.label("err_msg"), Some("No Error"));
}

#[test]
fn figures_are_converted_to_ratios_watts_and_bytes() {
    let gpus = gpus_from(&parse_text(FIXTURE));
    assert_eq!(gpus.len(), 2);
    let g = gpus.iter().find(|g| g.uuid == GPU0).unwrap();
    assert_eq!(g.gpu, 0);
    assert_eq!(g.figures[&Figure::GpuUtilization], 0.87);
    assert_eq!(g.figures[&Figure::MemoryBusy], 0.41);
    assert_eq!(g.figures[&Figure::DramBandwidth], 0.615833);
    assert_eq!(g.figures[&Figure::SmActive], 0.734120);
    assert_eq!(g.figures[&Figure::TensorActive], 0.402517);
    assert_eq!(g.figures[&Figure::Power], 412.337);
    assert_eq!(g.energy_mj, Some(81_734_219_405));
    assert_eq!(g.fb_used_bytes, Some(74_755 * 1024 * 1024));
    assert_eq!(g.fb_free_bytes, Some(6_254 * 1024 * 1024));
}

#[test]
fn escapes_timestamps_and_bad_lines() {
    let text = "a{x=\"q\\\"u\\\\o\\nte\"} 1 1700000000000\n\
                b 2e3\n\
                c{} +Inf\n\
                {x=\"1\"} 3\n\
                d{x=1} 4\n\
                e{x=\"1\" 5\n\
                f 1 2 3\n\
                g NaNx\n";
    let p = parse_text(text);
    assert_eq!(p.samples.len(), 3, "{p:?}");
    assert_eq!(p.samples[0].label("x"), Some("q\"u\\o\nte"));
    assert_eq!(p.samples[1].value, 2000.0);
    assert_eq!(p.samples[2].value, f64::INFINITY);
    assert_eq!(p.bad_lines, 5);
}

#[test]
fn the_parser_never_panics_on_any_prefix_or_byte_mutation() {
    for cut in 0..FIXTURE.len() {
        if FIXTURE.is_char_boundary(cut) {
            let _ = parse_text(&FIXTURE[..cut]);
            let _ = parse_text(&FIXTURE[cut..]);
        }
    }
    let bytes = FIXTURE.as_bytes();
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.to_vec();
        b[i] = b"{}\"\\=, \n"[i % 8];
        let _ = parse_text(&String::from_utf8_lossy(&b));
    }
}

#[test]
fn dcgm_fills_what_nvml_lacks_and_leaves_the_rest() {
    let hub = Hub::default();
    hub.write(|s| {
        let mut d = Device {
            uuid: GPU0.into(),
            ..Device::default()
        };
        d.push(Figure::GpuUtilization, Origin::Nvml, 0, 1_000, 0.5);
        s.devices.push(d);
    });
    let gpus = gpus_from(&parse_text(FIXTURE));
    apply(
        &hub,
        &gpus,
        40_000_000_000,
        false,
        &mut Learner::new(SCRAPE_EVERY),
    );
    hub.read(|s| {
        // Only the NVML device; the second GPU is not created.
        assert_eq!(s.devices.len(), 1);
        let d = &s.devices[0];
        assert_eq!(
            d.track(Figure::GpuUtilization).unwrap().origin,
            Origin::Nvml
        );
        assert_eq!(d.track(Figure::GpuUtilization).unwrap().series.len(), 1);
        let dram = d.track(Figure::DramBandwidth).unwrap();
        assert_eq!(dram.origin, Origin::Dcgm);
        let w = dram.series.window(39_000_000_000, 39_500_000_000);
        assert_eq!(w.mean, Some(0.615833));
        assert_eq!(w.resolution_ns, Some(RESOLUTION_NS));
        assert!(w.resolution_limited());
    });
}

/// Serves the recorded exposition over HTTP on loopback and scrapes it as the agent does.
#[tokio::test]
async fn scrapes_a_recorded_exporter_over_http() {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async { FIXTURE.to_string() }),
        )
        .route(
            "/garbled",
            axum::routing::get(|| async {
                format!("DCGM_FI_DEV_GPU_UTIL{{gpu=\"0\" 1\n}}}} x\n{FIXTURE}")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let hub = Hub::default();
    let url = format!("http://{addr}/metrics");
    let stats = Stats::default();
    let mut learner = Learner::new(SCRAPE_EVERY);
    let n = scrape_once(&client, &url, &hub, true, &mut learner, &stats)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(stats.get("gpu_dcgm_lines_malformed"), Some(0));
    hub.read(|s| {
        assert_eq!(s.devices.len(), 2);
        let d = s.devices.iter().find(|d| d.uuid == GPU0).unwrap();
        assert_eq!(d.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(d.pci_bus_id, "00000000:18:00.0");
        let util = d.track(Figure::GpuUtilization).unwrap();
        assert_eq!(util.origin, Origin::Dcgm);
        assert_eq!(util.series.latest().unwrap().value, 0.87);
        assert_eq!(d.memory.unwrap().used, 74_755 * 1024 * 1024);
        assert_eq!(d.energy_origin, Some(Origin::Dcgm));
    });
    // A path that is not an exporter says so.
    let nope = format!("http://{addr}/nope");
    let err = scrape_once(&client, &nope, &hub, true, &mut learner, &stats)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // Bad lines are counted, the rest is used.
    let url = format!("http://{addr}/garbled");
    let err = scrape_once(&client, &url, &hub, true, &mut learner, &stats).await;
    assert_eq!(err.unwrap(), 2);
    assert_eq!(stats.get("gpu_dcgm_lines_malformed"), Some(2));
    server.abort();
}

const S: u64 = 1_000_000_000;

/// A fake exporter collecting every `cadence_s` from `phase_s`, scraped every `scrape_s`: the
/// values of each scrape (a new value per collection).
fn scrapes(cadence_s: f64, phase_s: f64, scrape_s: f64, n: usize) -> Vec<(u64, Vec<u64>)> {
    (1..=n)
        .map(|k| {
            let t = k as f64 * scrape_s;
            let epoch = ((t - phase_s) / cadence_s).floor().max(0.0) as u64;
            ((t * 1e9) as u64, vec![epoch])
        })
        .collect()
}

#[test]
fn the_cadence_is_learned_from_when_values_change() {
    // (exporter cadence, scrape interval) → the cadence learned within a tenth.
    for (cadence, scrape, phase) in [
        (30.0, 10.0, 3.0),
        (30.0, 5.0, 0.2),
        (15.0, 10.0, 7.0),
        (2.0, 0.5, 0.3),
        (1.0, 0.3, 0.1),
        (10.0, 3.0, 1.0),
    ] {
        let mut c = Cadence::default();
        let mut fresh = 0;
        for (t, v) in scrapes(cadence, phase, scrape, (12.0 * cadence / scrape) as usize) {
            fresh += usize::from(c.observe(t, v));
        }
        let got = c.learned_ns().expect("learned") as f64 / 1e9;
        assert!(
            (got - cadence).abs() < 0.1 * cadence,
            "cadence {cadence} s scraped every {scrape} s: learned {got} s"
        );
        // One reading per collection (and the first scrape), not one per scrape.
        assert!((11..=14).contains(&fresh), "{fresh} readings");
    }
    // Faster than the scrapes: every scrape is new, and the cadence reads as the scrape interval.
    let mut c = Cadence::default();
    for (t, v) in scrapes(1.0, 0.0, 5.0, 10) {
        assert!(c.observe(t, v));
    }
    assert_eq!(c.learned_ns(), Some(5 * S));
}

#[test]
fn an_update_that_changed_nothing_and_steady_values_are_handled() {
    // Every 10 s, scraped every 2 s, but the values of one collection equal the previous one's:
    // the 20 s gap counts as two updates.
    let mut c = Cadence::default();
    let epochs = [0u64, 1, 2, 3, 3, 4, 5, 6, 7];
    for k in 0..45u64 {
        let t = k * 2 * S + S;
        let e = epochs[((t / S) / 10).min(8) as usize];
        c.observe(t, vec![e]);
    }
    let got = c.learned_ns().unwrap() as f64 / 1e9;
    assert!((got - 10.0).abs() < 1.0, "{got}");
    // Values that never change: the first scrape is a reading, then one every two cadences (30 s
    // assumed): the reading in effect is renewed, not lost.
    let mut c = Cadence::default();
    let fresh: Vec<u64> = (0..40u64)
        .filter(|k| c.observe(k * 5 * S, vec![7]))
        .collect();
    assert_eq!(fresh, vec![0, 12, 24, 36]);
    assert_eq!(c.learned_ns(), None);
}

/// A 30 s exporter scraped every 5 s into the hub: one interval per collection, the cadence as
/// the resolution, and a request between two collections gets the reading in effect.
#[test]
fn scrapes_of_a_slow_exporter_are_held_between_its_readings() {
    let hub = Hub::default();
    let mut learner = Learner::new(Duration::from_secs(5));
    let gpu = |epoch: u64| DcgmGpu {
        uuid: GPU0.into(),
        figures: BTreeMap::from([(Figure::GpuUtilization, 0.1 + 0.1 * (epoch % 8) as f64)]),
        energy_mj: Some(epoch * 9_000_000), // 300 W
        ..DcgmGpu::default()
    };
    // Collections at 2 s + 30 s·k; scrapes at 5 s·k, for 4 minutes.
    for k in 1..=48u64 {
        let t = k * 5 * S;
        let epoch = (t - 2 * S) / (30 * S);
        apply(&hub, &[gpu(epoch)], t, true, &mut learner);
    }
    assert_eq!(learner.learned_ns(), Some(30 * S));
    hub.read(|s| {
        let d = &s.devices[0];
        let t = d.track(Figure::GpuUtilization).unwrap();
        // Readings seen at 5 s (first scrape), then 35, 65, …, 215 s: 8 intervals.
        assert_eq!(t.series.len(), 8);
        assert_eq!(t.series.covered_until(), Some(215 * S));
        assert_eq!(t.series.typical_len(), Some(30 * S));
        // A 300 ms request at 228 s: the reading of 215 s (epoch 7, 0.8), 13.3 s old.
        let w = t.series.window(228 * S, 228 * S + 300_000_000);
        assert_eq!(w.mean, Some(0.8));
        assert_eq!(w.age_ns, Some(13_300_000_000));
        assert_eq!(w.coverage(), 0.0);
        assert!(w.resolution_limited());
        // Energy goes on at the last rate: 300 W over 300 ms.
        let e = d.energy.window(228 * S, 228 * S + 300_000_000).unwrap();
        assert!((e.increase - 90_000.0).abs() < 1.0, "{e:?}");
        assert_eq!(e.covered_ns, 0);
    });
}
