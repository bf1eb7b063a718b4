//! The request figures against an in-memory hub with scripted samples (times in ms).

use super::*;
use crate::gpu::{Device, GpuProcess, Memory, Origin};

const MS: u64 = 1_000_000;

/// A device with GPU utilisation `util[k]` over [k·100, (k+1)·100) ms and a 100 W energy
/// counter read every 100 ms (10 J per 100 ms, in mJ).
fn device(uuid: &str, index: u32, util: &[f64]) -> Device {
    let mut d = Device {
        uuid: uuid.into(),
        index,
        ..Device::default()
    };
    for (k, v) in util.iter().enumerate() {
        let k = k as u64;
        d.push(
            Figure::GpuUtilization,
            Origin::Nvml,
            k * 100 * MS,
            (k + 1) * 100 * MS,
            *v,
        );
    }
    for k in 0..=util.len() as u64 {
        d.energy.push(k * 100 * MS, 1_000_000 + k * 10_000);
    }
    d.energy_origin = Some(Origin::Nvml);
    d
}

fn act(start_ms: u64, end_ms: u64, chunks: &[u64]) -> Activity {
    Activity {
        start_ns: start_ms * MS,
        end_ns: end_ms * MS,
        chunk_ns: chunks.iter().map(|c| c * MS).collect(),
        later_chunks: 0,
        later_until_ns: 0,
    }
}

fn state(devices: Vec<Device>) -> HubState {
    HubState {
        devices,
        ..HubState::default()
    }
}

#[test]
fn one_gpu_alone_mean_max_energy_and_share() {
    let s = state(vec![device("GPU-a", 0, &[0.2, 0.6, 1.0, 0.4])]);
    let r = figures(&s, &[0], &BTreeSet::new(), &act(50, 250, &[100, 200]), &[]);
    // 50 ms at .2, 100 ms at .6, 50 ms at 1.0.
    let mean = (0.05 * 0.2 + 0.1 * 0.6 + 0.05 * 1.0) / 0.2;
    assert!((r.util_mean.unwrap() - mean).abs() < 1e-12, "{r:?}");
    assert_eq!(r.util_max, Some(1.0));
    assert_eq!(r.coverage, 1.0);
    assert_eq!(r.resolution_ns, Some(100 * MS));
    assert!(!r.resolution_limited);
    // 200 ms at 100 W = 20 J.
    assert!((r.energy_j.unwrap() - 20.0).abs() < 1e-9);
    assert_eq!(r.energy_coverage, Some(1.0));
    // Alone: the whole busy time and energy.
    assert!((r.share_busy_s.unwrap() - mean * 0.2).abs() < 1e-12);
    assert!((r.share_energy_j.unwrap() - 20.0).abs() < 1e-9);
    assert_eq!(r.concurrent, 1);
    assert_eq!(r.source, Some("nvml"));
}

#[test]
fn two_gpus_average_means_sum_energy_and_take_the_lowest_coverage() {
    let a = device("GPU-a", 0, &[0.5, 0.5]);
    let mut b = device("GPU-b", 1, &[1.0]); // samples only over [0,100)
    b.memory = Some(Memory {
        used: 3 << 30,
        total: 80 << 30,
        at_ns: 0,
    });
    b.processes = vec![
        GpuProcess {
            pid: 42,
            used_bytes: Some(2 << 30),
        },
        GpuProcess {
            pid: 7,
            used_bytes: Some(1 << 30),
        },
    ];
    let s = state(vec![a, b]);
    let tree = BTreeSet::from([41, 42]);
    let r = figures(&s, &[0, 1], &tree, &act(0, 200, &[]), &[]);
    assert_eq!(r.uuids, vec!["GPU-a", "GPU-b"]);
    assert!((r.util_mean.unwrap() - 0.75).abs() < 1e-12);
    assert_eq!(r.util_max, Some(1.0));
    assert!((r.coverage - 0.5).abs() < 1e-12);
    // GPU a: 20 J over 200 ms; GPU b's counter ends at 100 ms: 10 J, half covered.
    assert!((r.energy_j.unwrap() - 30.0).abs() < 1e-9);
    assert_eq!(r.energy_coverage, Some(0.5));
    // Only the process tree's memory, and the device's.
    assert_eq!(r.process_memory_bytes, Some(2 << 30));
    assert_eq!(r.device_memory_bytes, Some(3 << 30));
    assert_eq!(r.device_memory_limit_bytes, Some(80 << 30));
}

#[test]
fn window_before_the_first_sample_and_a_gpu_without_samples() {
    let s = state(vec![device("GPU-a", 0, &[0.5]), Device::default()]);
    let r = figures(&s, &[0], &BTreeSet::new(), &act(500, 600, &[]), &[]);
    assert_eq!(r.util_mean, None);
    assert_eq!(r.coverage, 0.0);
    assert_eq!(r.energy_j, None);
    let r = figures(&s, &[1], &BTreeSet::new(), &act(0, 100, &[]), &[]);
    assert_eq!(r.coverage, 0.0);
    assert_eq!(r.util_mean, None);
}

#[test]
fn a_request_shorter_than_one_sample_is_flagged() {
    let s = state(vec![device("GPU-a", 0, &[0.3, 0.9])]);
    let r = figures(&s, &[0], &BTreeSet::new(), &act(110, 130, &[]), &[]);
    assert!(r.resolution_limited);
    assert_eq!(r.util_mean, Some(0.9));
    let attrs = r.attributes();
    assert!(attrs.contains(&("infertap.gpu.resolution_limited", AttrValue::Bool(true))));
    assert!(attrs.contains(&("infertap.gpu.sample_resolution", AttrValue::F64(0.1))));
}

#[test]
fn overlapping_requests_share_by_chunks_and_presence() {
    let s = state(vec![device("GPU-a", 0, &[1.0, 1.0])]);
    // R over [0,200) writes 1 chunk in each interval; O (still in flight) writes 3 in the first.
    let r_act = act(0, 200, &[50, 150]);
    let o_act = Activity {
        start_ns: 0,
        end_ns: u64::MAX,
        chunk_ns: vec![10 * MS, 20 * MS, 30 * MS],
        later_chunks: 0,
        later_until_ns: 0,
    };
    let r = figures(&s, &[0], &BTreeSet::new(), &r_act, &[o_act]);
    // Interval 1: R 2/(2+4); interval 2: R 2/(2+1).
    let busy = 0.1 * (2.0 / 6.0) + 0.1 * (2.0 / 3.0);
    assert!((r.share_busy_s.unwrap() - busy).abs() < 1e-12, "{r:?}");
    let energy = 10.0 * (2.0 / 6.0) + 10.0 * (2.0 / 3.0);
    assert!((r.share_energy_j.unwrap() - energy).abs() < 1e-9);
    assert_eq!(r.concurrent, 2);
    // The device's own figures are not split.
    assert_eq!(r.util_mean, Some(1.0));
    assert!((r.energy_j.unwrap() - 20.0).abs() < 1e-9);
}

#[test]
fn placement_prefers_nvml_process_lists_then_visible_devices() {
    let mut a = device("GPU-a", 0, &[]);
    let b = device("GPU-b", 1, &[]);
    a.processes = vec![GpuProcess {
        pid: 101,
        used_bytes: None,
    }];
    let s = state(vec![a, b]);
    // A child (101) of the target (100) holds GPU a.
    let tree = BTreeSet::from([100, 101]);
    let visible = Visible::List(vec![DeviceRef::Index(1)]);
    assert_eq!(
        place(&s, &tree, Some(&visible)),
        (vec![0], Some(Attribution::NvmlProcesses))
    );
    let other = BTreeSet::from([200]);
    assert_eq!(
        place(&s, &other, Some(&visible)),
        (vec![1], Some(Attribution::VisibleDevices))
    );
    let by_uuid = Visible::List(vec![DeviceRef::Uuid("GPU-b".into())]);
    assert_eq!(place(&s, &other, Some(&by_uuid)).0, vec![1]);
    assert_eq!(place(&s, &other, Some(&Visible::All)).0, vec![0, 1]);
    assert_eq!(place(&s, &other, None), (vec![], None));
}

#[test]
fn energy_and_busy_time_split_at_the_first_token_and_priced_per_token() {
    // 100 W throughout (10 J per 100 ms); utilisation .5 then 1.0. The request runs [0, 200) ms,
    // its first content chunk at 50 ms (prefill 0–50 ms), then chunks at 100 and 150 ms.
    let s = state(vec![device("GPU-a", 0, &[0.5, 1.0])]);
    let r = figures(
        &s,
        &[0],
        &BTreeSet::new(),
        &act(0, 200, &[50, 100, 150]),
        &[],
    );
    // Alone: prefill 50 ms at .5 = .025 s busy and 5 J; decode the rest.
    assert!((r.prefill_busy_s.unwrap() - 0.025).abs() < 1e-12, "{r:?}");
    assert!((r.prefill_energy_j.unwrap() - 5.0).abs() < 1e-9);
    assert!((r.share_energy_j.unwrap() - 20.0).abs() < 1e-9);
    assert!((r.share_gpu_s.unwrap() - 0.2).abs() < 1e-12);
    let attrs: Vec<_> = r.attributes();
    let get = |k: &str| {
        attrs
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    let f = |k: &str| match get(k) {
        Some(AttrValue::F64(x)) => x,
        other => panic!("{k}: {other:?}"),
    };
    assert!((f("infertap.gpu.share.busy_time.decode") - (0.05 * 0.5 + 0.1)).abs() < 1e-12);
    assert!((f("infertap.gpu.share.energy.decode") - 15.0).abs() < 1e-9);
    assert!((f("infertap.gpu.share.energy.prefill") - 5.0).abs() < 1e-9);

    // 4 output tokens: 5 J per token; at 3.60 per GPU-hour, 0.2 s of GPU time costs 0.0002,
    // 50 per million tokens.
    let cost = per_token(&r, Some(4), Some(3.6));
    let c = |k: &str| {
        cost.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        c("infertap.gpu.energy_per_output_token"),
        Some(AttrValue::F64(5.0))
    );
    match c("infertap.gpu.share.cost") {
        Some(AttrValue::F64(x)) => assert!((x - 0.0002).abs() < 1e-12),
        other => panic!("{other:?}"),
    }
    match c("infertap.cost.per_million_output_tokens") {
        Some(AttrValue::F64(x)) => assert!((x - 50.0).abs() < 1e-6),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c("infertap.gpu.share.estimated"),
        Some(AttrValue::Bool(false))
    );
    // No price: no cost; a window the samples do not cover: an estimate.
    assert!(per_token(&r, Some(4), None)
        .iter()
        .all(|(k, _)| *k != "infertap.gpu.share.cost"));
    let partial = figures(&s, &[0], &BTreeSet::new(), &act(150, 300, &[200]), &[]);
    assert!(per_token(&partial, Some(1), None)
        .contains(&("infertap.gpu.share.estimated", AttrValue::Bool(true))));
}

#[test]
fn without_dram_bandwidth_the_memory_busy_samples_are_the_bandwidth_figure() {
    // An A100-like GPU: no GPM, NVML memory-utilisation samples .3 then .9.
    let mut d = device("GPU-a", 0, &[0.5, 0.5]);
    for (k, v) in [0.3, 0.9].iter().enumerate() {
        let k = k as u64;
        d.push(
            Figure::MemoryBusy,
            Origin::Nvml,
            k * 100 * MS,
            (k + 1) * 100 * MS,
            *v,
        );
    }
    let s = state(vec![d.clone()]);
    let r = figures(&s, &[0], &BTreeSet::new(), &act(0, 200, &[]), &[]);
    assert!((r.bandwidth_mean.unwrap() - 0.6).abs() < 1e-12, "{r:?}");
    assert_eq!(r.bandwidth_max, Some(0.9));
    assert_eq!(r.bandwidth_source, Some("nvml_memory_busy"));
    // With DRAM bandwidth (GPM) that one wins.
    d.push(Figure::DramBandwidth, Origin::NvmlGpm, 0, 200 * MS, 0.25);
    let s = state(vec![d]);
    let r = figures(&s, &[0], &BTreeSet::new(), &act(0, 200, &[]), &[]);
    assert_eq!(r.bandwidth_mean, Some(0.25));
    assert_eq!(r.bandwidth_source, Some("nvml_gpm"));
}

/// A DCGM-only device fed as the scraper feeds it: an exporter collecting every 30 s (at 2 s +
/// 30 s·k), scraped every 5 s, utilisation 0.2, 0.4, 0.6, … per collection, 300 W.
fn dcgm_only(until_s: u64) -> HubState {
    use crate::gpu::dcgm::{apply, DcgmGpu, Learner};
    let hub = crate::gpu::Hub::default();
    let mut learner = Learner::new(std::time::Duration::from_secs(5));
    for k in 1..=until_s / 5 {
        let t = k * 5_000 * MS;
        let epoch = (t - 2_000 * MS) / (30_000 * MS);
        let g = DcgmGpu {
            uuid: "GPU-d".into(),
            figures: [(Figure::GpuUtilization, 0.2 * (1 + epoch % 4) as f64)].into(),
            energy_mj: Some(epoch * 9_000_000),
            ..DcgmGpu::default()
        };
        apply(&hub, &[g], t, true, &mut learner);
    }
    hub.read(|s| snapshot(s, &[0], &BTreeSet::new(), 0, u64::MAX / 2))
}

#[test]
fn dcgm_only_short_requests_between_readings_get_the_reading_in_effect() {
    // Readings seen at 5 s, 35, 65, 95, 125 s (epochs 0…4: 0.2, 0.4, 0.6, 0.8, 0.2). Requests of
    // 150–400 ms between scrapes and readings, each enriched 1 s after its end with what the hub
    // held then: the reading in effect, held, its age at the request's end, nothing measured.
    for (start, end, value, reading) in [
        (96_100, 96_400, 0.8, 95_000),
        (110_000, 110_150, 0.8, 95_000),
        (127_300, 127_700, 0.2, 125_000),
    ] {
        let s = dcgm_only(end / 1000 + 1);
        let r = figures(
            &s,
            &[0],
            &BTreeSet::new(),
            &act(start, end, &[start + 50]),
            &[],
        );
        assert_eq!(r.util_mean, Some(value), "{r:?}");
        assert_eq!(r.source, Some("dcgm"));
        assert_eq!(r.coverage, 0.0);
        assert_eq!(r.resolution_ns, Some(30_000 * MS));
        assert!(r.resolution_limited);
        let age = r.sample_age_ns.unwrap();
        assert_eq!(age, (end - reading) * MS);
        // Alone: busy time and energy at the values in effect (and 300 W).
        let dur = (end - start) as f64 / 1e3;
        assert!(
            (r.share_busy_s.unwrap() - value * dur).abs() < 1e-9,
            "{r:?}"
        );
        assert!((r.energy_j.unwrap() - 300.0 * dur).abs() < 1e-6, "{r:?}");
        assert_eq!(r.energy_coverage, Some(0.0));
        assert!((r.share_energy_j.unwrap() - 300.0 * dur).abs() < 1e-6);
        assert!((r.prefill_energy_j.unwrap() - 300.0 * 0.05).abs() < 1e-6);
        let attrs = r.attributes();
        assert!(attrs.contains(&("infertap.gpu.sample_age", AttrValue::F64(age as f64 / 1e9))));
        assert!(per_token(&r, Some(5), None)
            .contains(&("infertap.gpu.share.estimated", AttrValue::Bool(true))));
    }
    let s = dcgm_only(130);
    // Two requests together split what was in effect.
    let a = act(120_000, 120_200, &[120_100]);
    let b = act(120_000, 120_200, &[120_100]);
    let ra = figures(&s, &[0], &BTreeSet::new(), &a, std::slice::from_ref(&b));
    assert!(
        (ra.share_busy_s.unwrap() - 0.2 * 0.2 / 2.0).abs() < 1e-9,
        "{ra:?}"
    );
    assert_eq!(ra.concurrent, 2);
    // A request the readings cover: measured, age 0.
    let r = figures(&s, &[0], &BTreeSet::new(), &act(70_000, 70_300, &[]), &[]);
    assert_eq!(
        (r.util_mean, r.coverage, r.sample_age_ns),
        (Some(0.8), 1.0, Some(0))
    );
    // Past the hold (two cadences and a scrape interval after the last reading), nothing.
    let r = figures(&s, &[0], &BTreeSet::new(), &act(191_000, 191_300, &[]), &[]);
    assert_eq!((r.util_mean, r.energy_j), (None, None));
}

#[test]
fn a_span_waits_for_nvml_samples_but_not_for_held_dcgm_readings() {
    let nvml = state(vec![device("GPU-a", 0, &[0.5, 0.5])]);
    assert!(all_cover(&nvml, Some(&[0]), &BTreeSet::new(), 150 * MS));
    assert!(!all_cover(&nvml, Some(&[0]), &BTreeSet::new(), 250 * MS));
    let dcgm = dcgm_only(60);
    assert!(all_cover(&dcgm, Some(&[0]), &BTreeSet::new(), 61_000 * MS));
}
