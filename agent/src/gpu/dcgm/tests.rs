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
    apply(&hub, &gpus, 40_000_000_000, false);
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
    let n = scrape_once(&client, &url, &hub, true, &stats)
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
    let err = scrape_once(&client, &format!("http://{addr}/nope"), &hub, true, &stats)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // Bad lines are counted, the rest is used.
    let url = format!("http://{addr}/garbled");
    let err = scrape_once(&client, &url, &hub, true, &stats).await;
    assert_eq!(err.unwrap(), 2);
    assert_eq!(stats.get("gpu_dcgm_lines_malformed"), Some(2));
    server.abort();
}
