//! Long-tailed subsets (numpy's RNG reproduced), the digits split, class groups, and the
//! committed split files. Regenerate the committed files with
//! `SSLC_REGENERATE_SPLITS=1 cargo test -p sslc-runtime --test data_splits`.

use sslc_runtime::data::groups::{group_sizes, groups_by_thirds, groups_by_thresholds, Group};
use sslc_runtime::data::image_list::{self, counts_per_label, Benchmark};
use sslc_runtime::data::long_tail::split_listing;
use sslc_runtime::data::numpy_rng::Mt19937;
use sslc_runtime::data::{digits, ClassOrder, ImbalanceProfile, LongTail};
use std::path::{Path, PathBuf};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// The official lists: `shared/split` beside the repository.
fn shared_split() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/split");
    if dir.is_dir() {
        return Some(dir);
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI needs the official lists at {}", dir.display());
    eprintln!("SKIPPED: the official lists are not at {}", dir.display());
    None
}

/// Compares a committed generated file with its generator's output, or rewrites it.
fn check_committed(relative: &str, generated: &str) {
    let path = repo_file(relative);
    if std::env::var("SSLC_REGENERATE_SPLITS").is_ok() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "{relative} differs from its generator; regenerate with SSLC_REGENERATE_SPLITS=1");
}

fn lt(imbalance: f64, profile: ImbalanceProfile) -> LongTail {
    LongTail::new(imbalance, profile).unwrap()
}

#[test]
fn mt19937_matches_numpy_seeded_with_zero() {
    // np.random.seed(0); np.random.randint(0, 2**32, size=3, dtype=np.uint64)
    let mut rng = Mt19937::new(0);
    assert_eq!([rng.next_u32(), rng.next_u32(), rng.next_u32()], [2_357_136_044, 2_546_248_239, 3_071_714_933]);
}

#[test]
fn shuffle_matches_numpy_permutation() {
    // np.random.seed(s); np.random.permutation(10)
    for (seed, expected) in [(0, [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]), (42, [8, 1, 5, 0, 7, 2, 9, 4, 3, 6])] {
        let mut items: Vec<u32> = (0..10).collect();
        Mt19937::new(seed).shuffle(&mut items);
        assert_eq!(items, expected, "seed {seed}");
    }
}

#[test]
fn per_class_counts_match_the_reference_totals() {
    let total = |long_tail: LongTail, per_class, classes| long_tail.counts(per_class, classes).iter().sum::<usize>();
    assert_eq!(total(lt(0.01, ImbalanceProfile::Exp), 500, 100), 10_847);
    assert_eq!(total(lt(0.02, ImbalanceProfile::Exp), 500, 100), 12_608);
    assert_eq!(total(lt(0.1, ImbalanceProfile::Exp), 500, 100), 19_573);
    assert_eq!(total(lt(0.01, ImbalanceProfile::Step), 500, 100), 25_250);
    assert_eq!(total(lt(0.01, ImbalanceProfile::Exp), 5000, 10), 12_406);
    let counts = lt(0.01, ImbalanceProfile::Exp).counts(500, 100);
    assert_eq!((counts[0], counts[50], counts[99]), (500, 48, 5));
    assert_eq!(lt(0.01, ImbalanceProfile::Step).counts(500, 100)[49..51], [500, 5]);
}

#[test]
fn invalid_imbalance_factors_are_refused() {
    for bad in [0.0, -0.1, 1.5, f64::NAN] {
        let error = LongTail::new(bad, ImbalanceProfile::Exp).unwrap_err();
        assert!(error.to_string().contains("n_min / n_max"), "{error}");
    }
    assert!(ImbalanceProfile::from_name("linear").unwrap_err().to_string().contains("`exp`, `step`"));
}

/// Values from the reference's `gen_imbalanced_data` run with numpy on the same labels.
#[test]
fn cifar100_selection_keeps_the_images_numpy_keeps() {
    let labels: Vec<u32> = (0..50_000).map(|i| (i * 37 % 100) as u32).collect();
    let kept = lt(0.01, ImbalanceProfile::Exp).select(&labels, 100, ClassOrder::ByLabel, 0).unwrap();
    assert_eq!(kept.len(), 10_847);
    assert_eq!(kept[..6], [9000, 25400, 28300, 44500, 46100, 1500]);
    assert_eq!(kept[kept.len() - 5..], [34827, 15327, 36327, 36127, 29927]);
    assert_eq!(kept.iter().sum::<usize>(), 271_470_428);
}

#[test]
fn cifar10_selection_shuffles_the_classes_first_as_the_reference() {
    let labels: Vec<u32> = (0..50_000).map(|i| (i * 3 % 10) as u32).collect();
    let kept = lt(0.01, ImbalanceProfile::Exp).select(&labels, 10, ClassOrder::Shuffled, 0).unwrap();
    assert_eq!(kept.len(), 12_406);
    assert_eq!(kept[..6], [4054, 42244, 4914, 31184, 15294, 33754]);
    assert_eq!(kept[kept.len() - 5..], [22625, 665, 22125, 4335, 11625]);
    assert_eq!(kept.iter().sum::<usize>(), 310_556_757);
    // The head is class 2, the first of numpy's shuffled class order.
    assert!(kept[..5000].iter().all(|&i| labels[i] == 2));
}

#[test]
fn selection_refuses_unbalanced_or_out_of_range_labels() {
    let error = lt(0.1, ImbalanceProfile::Exp).select(&[0, 0, 1], 2, ClassOrder::ByLabel, 0).unwrap_err();
    assert!(error.to_string().contains("balanced"), "{error}");
    let error = lt(0.1, ImbalanceProfile::Exp).select(&[0, 5], 2, ClassOrder::ByLabel, 0).unwrap_err();
    assert!(error.to_string().contains("label 5"), "{error}");
}

#[test]
fn split_listing_prints_index_and_label_of_each_kept_image() {
    let labels = [0, 1, 0, 1, 0, 1];
    let long_tail = lt(0.34, ImbalanceProfile::Exp);
    let kept = long_tail.select(&labels, 2, ClassOrder::ByLabel, 0).unwrap();
    let text = split_listing("toy", &labels, &kept, &long_tail);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "# toy: long-tailed subset, imbalance 0.34 (exp), 4 of 6 training images");
    assert_eq!(lines.len(), 2 + 4);
    assert!(lines[2..].iter().all(|l| l.split(' ').nth(1)
        == Some(&labels[l.split(' ').next().unwrap().parse::<usize>().unwrap()].to_string()[..])));
}

#[test]
fn thirds_follow_the_reference_index_arithmetic() {
    let counts = lt(0.01, ImbalanceProfile::Exp).counts(500, 100);
    let groups = groups_by_thirds(&counts);
    assert_eq!(group_sizes(&groups), [34, 33, 33]);
    assert_eq!(
        (groups[0], groups[33], groups[34], groups[66], groups[67], groups[99]),
        (Group::Many, Group::Many, Group::Medium, Group::Medium, Group::Few, Group::Few)
    );
    let ten = groups_by_thirds(&lt(0.01, ImbalanceProfile::Exp).counts(5000, 10));
    assert_eq!(group_sizes(&ten), [4, 3, 3]);
    assert_eq!(ten[3], Group::Many);
}

#[test]
fn thresholds_split_at_100_and_20() {
    assert_eq!(groups_by_thresholds(&[101, 100, 20, 19]), vec![Group::Many, Group::Medium, Group::Medium, Group::Few]);
}

#[test]
fn digits_split_is_balanced_where_it_should_be_and_long_tailed_elsewhere() {
    let long_tail = lt(digits::DEFAULT_IMBALANCE, ImbalanceProfile::Exp);
    let splits = digits::load_long_tailed(&long_tail).unwrap();
    assert_eq!(splits.test.class_counts(), vec![50; 10]);
    assert_eq!(splits.probe_train.class_counts(), vec![124; 10]);
    assert_eq!(splits.train.class_counts(), long_tail.counts(124, 10));
    assert_eq!(splits.train.len(), 503);
    assert_eq!(splits.train.class_counts()[9], 12);
    let image = splits.train.image(0).unwrap();
    assert_eq!((image.channels(), image.height(), image.width()), (1, 8, 8));
    assert!(image.data().iter().all(|v| (v * 16.0).fract() == 0.0 && (0.0..=1.0).contains(v)));
}

#[test]
fn digits_split_file_is_what_the_generator_writes() {
    let text = digits::split_file_text().unwrap();
    let rows: Vec<Vec<&str>> = text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), 1797);
    let count = |role: &str| rows.iter().filter(|r| r[2] == role).count();
    assert_eq!((count("test"), count("train"), count("probe")), (500, 503, 1240 - 503));
    assert_eq!(count("unused"), 1797 - 500 - 1240);
    check_committed("split/digits_lt.txt", &text);
}

#[test]
fn manifest_is_what_the_generator_computes_from_the_official_lists() {
    let Some(split) = shared_split() else { return };
    check_committed("split/manifest.json", &image_list::manifest_json(&split).unwrap());
}

#[test]
fn places_lt_train_list_has_the_published_statistics() {
    let Some(split) = shared_split() else { return };
    let list = Benchmark::PlacesLt.list_files(&split).train;
    let stats = image_list::list_stats(&list).unwrap();
    assert_eq!((stats.lines, stats.classes, stats.max_per_class, stats.min_per_class), (62_500, 365, 4_980, 5));
    let (_, labels) = image_list::read_list(&list, 365).unwrap();
    assert_eq!(group_sizes(&groups_by_thresholds(&counts_per_label(&labels))), [131, 163, 71]);
    assert!(image_list::verify_against_official(&list).unwrap().is_empty());
}

#[test]
fn a_list_that_differs_from_the_official_one_is_reported() {
    let Some(split) = shared_split() else { return };
    let official = std::fs::read_to_string(Benchmark::PlacesLt.list_files(&split).test).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("data_splits_edited");
    std::fs::create_dir_all(&dir).unwrap();
    let edited = dir.join("Places_val.txt");
    std::fs::write(&edited, official.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let differences = image_list::verify_against_official(&edited).unwrap();
    assert!(differences.iter().any(|d| d.contains("lines is 36499, the official list has 36500")), "{differences:?}");
    assert!(differences.iter().any(|d| d.contains("sha256")), "{differences:?}");
}
