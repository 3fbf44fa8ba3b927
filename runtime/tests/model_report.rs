//! Reports: metrics log, group table, per-class plot.

use std::path::PathBuf;

use sslc_runtime::probe::{AccuracyReport, Group};
use sslc_runtime::report::{group_table, plot_per_class, MetricsLog};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-model-report").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn report() -> AccuracyReport {
    let groups = [Group::Many, Group::Many, Group::Medium, Group::Few];
    AccuracyReport::new(&[0, 1, 2, 0, 3, 0, 0, 0], &[0, 1, 2, 2, 3, 3, 0, 1], &groups).unwrap()
}

#[test]
fn group_table_lists_many_medium_few_and_overall_in_percent() {
    let table = group_table(&report());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), vec!["Many", "75.00"]);
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), vec!["Medium", "50.00"]);
    assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), vec!["Few", "50.00"]);
    assert_eq!(lines[4].split_whitespace().collect::<Vec<_>>(), vec!["overall", "62.50"]);
    assert!(lines[5].contains("balancedness"));
}

#[test]
fn metrics_log_writes_one_json_object_per_line_and_drops_epochs_a_resume_repeats() {
    let path = scratch_dir("metrics").join("metrics.jsonl");
    let mut log = MetricsLog::open(&path, 0).unwrap();
    for epoch in 0..3 {
        log.step(epoch, 0, 1.5, 0.1, 0.2, 40.0, 0.05, &[("alignment".into(), 0.25)]).unwrap();
        log.epoch(epoch, 1.5, 0.1, 0.4, 30.0, 0.1, &[]).unwrap();
    }
    drop(log);
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    };
    let lines = read();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["alignment"], 0.25);
    assert_eq!(lines[1]["kind"], "epoch");
    // Resuming at epoch 2 (two epochs checkpointed) drops epoch 2's lines, keeps the rest.
    MetricsLog::open(&path, 2).unwrap();
    let kept = read();
    assert_eq!(kept.len(), 4);
    assert!(kept.iter().all(|line| line["epoch"].as_u64().unwrap() < 2));
}

#[test]
fn per_class_plot_renders_text_with_the_embedded_font() {
    let path = scratch_dir("plot").join("per_class.png");
    plot_per_class(&path, &report(), &[500, 200, 30, 5], &[Group::Many, Group::Many, Group::Medium, Group::Few])
        .unwrap();
    let image = image::open(&path).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (1000, 640));
    // The caption band holds dark glyph pixels only if text was drawn.
    let dark_in_caption = (0..1000)
        .flat_map(|x| (0..45).map(move |y| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(dark_in_caption > 200, "{dark_in_caption} dark pixels in the caption");
    // Each group's colour appears (Many blue, Medium orange, Few red).
    for colour in [[31u8, 119, 180], [255, 127, 14], [214, 39, 40]] {
        assert!(image.pixels().any(|pixel| pixel.0 == colour), "no point of colour {colour:?}");
    }
}

#[test]
fn per_class_plot_refuses_mismatched_inputs() {
    let path = scratch_dir("plot-bad").join("per_class.png");
    let error = plot_per_class(&path, &report(), &[1, 2], &[Group::Many]).unwrap_err();
    assert!(error.to_string().contains("one training count and one group per class"), "{error}");
}
