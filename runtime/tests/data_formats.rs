//! The official file formats, from fixtures written here in the real layouts: CIFAR binary
//! records and cPickle protocol-2 dicts, IDX (plain and gzipped), JPEG/PNG list files.

use sslc_runtime::data::cifar::{self, CifarVariant, Part};
use sslc_runtime::data::image_list::{self, Benchmark, ListFiles};
use sslc_runtime::data::pickle::{self, PickleValue};
use sslc_runtime::data::{
    fashion_mnist, load, split_listing, DataError, DataOptions, DatasetName, ImbalanceProfile, LongTail,
};
use std::io::Write;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("data_formats").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A deterministic 3x32x32 image for sample `i`.
fn pixels(i: usize) -> Vec<u8> {
    (0..3072).map(|k| ((i * 7 + k * 3) % 256) as u8).collect()
}

/// `per_class` images per class, labels cycling through the classes.
fn fixture_labels(classes: usize, per_class: usize) -> Vec<u8> {
    (0..classes * per_class).map(|i| (i % classes) as u8).collect()
}

fn write_binary(path: &Path, variant: CifarVariant, labels: &[u8], first_index: usize) {
    let mut bytes = Vec::new();
    for (k, &label) in labels.iter().enumerate() {
        if variant == CifarVariant::Cifar100 {
            bytes.push(label / 5);
        }
        bytes.push(label);
        bytes.extend(pixels(first_index + k));
    }
    std::fs::write(path, bytes).unwrap();
}

/// A small int as cPickle writes it.
fn pickle_int(out: &mut Vec<u8>, value: usize) {
    match value {
        0..=0xff => out.extend([b'K', value as u8]),
        0x100..=0xffff => {
            out.push(b'M');
            out.extend((value as u16).to_le_bytes());
        }
        _ => {
            out.push(b'J');
            out.extend((value as i32).to_le_bytes());
        }
    }
}

fn pickle_short_str(out: &mut Vec<u8>, text: &str) {
    out.extend([b'U', text.len() as u8]);
    out.extend(text.as_bytes());
}

/// A CIFAR batch dict as Python 2's cPickle protocol 2 wrote the official files: `data` a
/// numpy uint8 array via `_reconstruct` + BUILD with the raw bytes as BINSTRING, labels a list
/// appended in batches of 1000, memo puts along the way.
fn cpickle_batch(label_key: &str, labels: &[u8], first_index: usize) -> Vec<u8> {
    let n = labels.len();
    let mut out = vec![0x80, 2, b'}', b'q', 1, b'('];
    pickle_short_str(&mut out, "data");
    out.extend(b"q\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85q\x05U\x01bq\x06\x87Rq\x07(K\x01");
    pickle_int(&mut out, n);
    pickle_int(&mut out, 3072);
    out.extend(b"\x86q\x08cnumpy\ndtype\nq\x09U\x02u1q\x0aK\x00K\x01\x87Rq\x0b(K\x03U\x01|q\x0cNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0db\x89T");
    out.extend(((n * 3072) as u32).to_le_bytes());
    for k in 0..n {
        out.extend(pixels(first_index + k));
    }
    out.extend(b"q\x0etq\x0fb");
    pickle_short_str(&mut out, label_key);
    out.extend(b"q\x10]q\x11");
    for chunk in labels.chunks(1000) {
        out.push(b'(');
        for &label in chunk {
            pickle_int(&mut out, usize::from(label));
        }
        out.push(b'e');
    }
    pickle_short_str(&mut out, "batch_label");
    pickle_short_str(&mut out, "training batch 1 of 1");
    out.extend(b"u.");
    out
}

fn write_cifar100_binary(root: &Path, per_class: usize) {
    let dir = root.join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    write_binary(&dir.join("train.bin"), CifarVariant::Cifar100, &fixture_labels(100, per_class), 0);
    write_binary(&dir.join("test.bin"), CifarVariant::Cifar100, &fixture_labels(100, 1), 100_000);
    let names: String = (0..100).map(|c| format!("class_{c}\n")).collect();
    std::fs::write(dir.join("fine_label_names.txt"), names).unwrap();
}

fn write_cifar100_python(root: &Path, per_class: usize) {
    let dir = root.join("cifar-100-python");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train"), cpickle_batch("fine_labels", &fixture_labels(100, per_class), 0)).unwrap();
    std::fs::write(dir.join("test"), cpickle_batch("fine_labels", &fixture_labels(100, 1), 100_000)).unwrap();
}

fn message(error: DataError) -> String {
    error.to_string()
}

#[test]
fn cifar100_binary_records_are_read_with_fine_labels_and_names() {
    let root = scratch("c100bin");
    write_cifar100_binary(&root, 3);
    let train = cifar::read(&root, CifarVariant::Cifar100, Part::Train).unwrap();
    assert_eq!(train.len(), 300);
    assert_eq!(&train.labels()[..4], &[0, 1, 2, 3]);
    assert_eq!(train.class_counts(), vec![3; 100]);
    assert_eq!(train.class_names().unwrap()[42], "class_42");
    let image = train.image(5).unwrap();
    assert_eq!((image.channels(), image.height(), image.width()), (3, 32, 32));
    let expected: Vec<f32> = pixels(5).iter().map(|&v| f32::from(v) / 255.0).collect();
    assert_eq!(image.data(), expected.as_slice());
    // Pointing at the extracted folder itself works too.
    let test = cifar::read(&root.join("cifar-100-binary"), CifarVariant::Cifar100, Part::Test).unwrap();
    assert_eq!(test.len(), 100);
    assert_eq!(test.image(0).unwrap().data()[0], f32::from(pixels(100_000)[0]) / 255.0);
}

#[test]
fn cifar100_python_pickles_give_the_same_dataset_as_the_binary_files() {
    let (binary_root, python_root) = (scratch("c100cmp_bin"), scratch("c100cmp_py"));
    write_cifar100_binary(&binary_root, 12);
    write_cifar100_python(&python_root, 12);
    let binary = cifar::read(&binary_root, CifarVariant::Cifar100, Part::Train).unwrap();
    let python = cifar::read(&python_root, CifarVariant::Cifar100, Part::Train).unwrap();
    assert_eq!(python.len(), 1200);
    assert_eq!(binary.labels(), python.labels());
    for i in [0, 1, 599, 1199] {
        assert_eq!(binary.image(i).unwrap(), python.image(i).unwrap());
    }
}

#[test]
fn cifar10_reads_five_binary_batches_and_the_python_layout() {
    let root = scratch("c10");
    let bin = root.join("cifar-10-batches-bin");
    let py = root.join("cifar-10-batches-py");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&py).unwrap();
    let labels = fixture_labels(10, 2);
    for batch in 1..=5 {
        write_binary(&bin.join(format!("data_batch_{batch}.bin")), CifarVariant::Cifar10, &labels, batch * 100);
        std::fs::write(py.join(format!("data_batch_{batch}")), cpickle_batch("labels", &labels, batch * 100)).unwrap();
    }
    write_binary(&bin.join("test_batch.bin"), CifarVariant::Cifar10, &labels, 0);
    std::fs::write(py.join("test_batch"), cpickle_batch("labels", &labels, 0)).unwrap();
    let from_binary = cifar::read(&bin, CifarVariant::Cifar10, Part::Train).unwrap();
    let from_python = cifar::read(&py, CifarVariant::Cifar10, Part::Train).unwrap();
    assert_eq!(from_binary.len(), 100);
    assert_eq!(from_binary.class_counts(), vec![10; 10]);
    assert_eq!(from_binary.labels(), from_python.labels());
    assert_eq!(from_binary.image(37).unwrap(), from_python.image(37).unwrap());
    assert_eq!(from_binary.image(20).unwrap().data()[0], f32::from(pixels(200)[0]) / 255.0);
}

#[test]
fn cifar_long_tailed_splits_keep_the_profile_and_the_balanced_probe_set() {
    let root = scratch("c100lt");
    write_cifar100_binary(&root, 10);
    let long_tail = LongTail::new(0.1, ImbalanceProfile::Exp).unwrap();
    let splits = cifar::load_long_tailed(&root, CifarVariant::Cifar100, &long_tail).unwrap();
    assert_eq!(splits.train.class_counts(), long_tail.counts(10, 100));
    assert_eq!(splits.train.len(), long_tail.counts(10, 100).iter().sum::<usize>());
    assert_eq!(splits.probe_train.class_counts(), vec![10; 100]);
    assert_eq!(splits.test.len(), 100);
    // Class-major order, head first, as the reference's `gen_imbalanced_data` builds it.
    assert!(splits.train.labels().windows(2).all(|w| w[0] <= w[1]));
    let kept = long_tail.select(splits.probe_train.labels(), 100, CifarVariant::Cifar100.class_order(), 0).unwrap();
    assert_eq!(splits.train.image(3).unwrap(), splits.probe_train.image(kept[3]).unwrap());
}

#[test]
fn missing_cifar_says_where_to_download_it() {
    let root = scratch("c100missing");
    let text = message(cifar::read(&root, CifarVariant::Cifar100, Part::Train).unwrap_err());
    assert!(text.contains("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"), "{text}");
    assert!(text.contains("cifar-100-python/test"), "{text}");
    let text = message(cifar::read(&root, CifarVariant::Cifar10, Part::Test).unwrap_err());
    assert!(text.contains("cifar-10-binary.tar.gz"), "{text}");
}

#[test]
fn malformed_cifar_files_are_refused_with_what_was_expected() {
    let root = scratch("c100bad");
    write_cifar100_binary(&root, 1);
    let train = root.join("cifar-100-binary/train.bin");
    let mut truncated = std::fs::read(&train).unwrap();
    truncated.truncate(truncated.len() - 10);
    std::fs::write(&train, truncated).unwrap();
    let text = message(cifar::read(&root, CifarVariant::Cifar100, Part::Train).unwrap_err());
    assert!(text.contains("train.bin") && text.contains("3074 bytes"), "{text}");

    let mut bad_label = vec![0u8, 150];
    bad_label.extend(pixels(0));
    std::fs::write(&train, bad_label).unwrap();
    let text = message(cifar::read(&root, CifarVariant::Cifar100, Part::Train).unwrap_err());
    assert!(text.contains("label 150") && text.contains("below 100"), "{text}");

    let py = scratch("c100badpy").join("cifar-100-python");
    std::fs::create_dir_all(&py).unwrap();
    std::fs::write(py.join("test"), cpickle_batch("labels", &[1, 2], 0)).unwrap();
    let text = message(cifar::read(py.parent().unwrap(), CifarVariant::Cifar100, Part::Test).unwrap_err());
    assert!(text.contains("fine_labels"), "{text}");
    std::fs::write(py.join("test"), b"\x80\x02cos\nsystem\n.").unwrap();
    let text = message(cifar::read(py.parent().unwrap(), CifarVariant::Cifar100, Part::Test).unwrap_err());
    assert!(text.contains("cifar-100-python/test") && text.contains("no numpy array"), "{text}");
}

/// `pickle.dumps({b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"fine_labels": [3, 7],
/// "x": 1}, protocol=2)` from Python 3.11 with numpy 2.4: bytes as `_codecs.encode`.
const PYTHON3_PICKLE: &[u8] = b"\x80\x02}q\x00(c_codecs\x0aencode\x0aq\x01X\x04\x00\x00\x00dataq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05cnumpy._core.multiarray\x0a_reconstruct\x0aq\x06cnumpy\x0andarray\x0aq\x07K\x00\x85q\x08h\x01X\x01\x00\x00\x00bq\x09h\x03\x86q\x0aRq\x0b\x87q\x0cRq\x0d(K\x01K\x02K\x06\x86q\x0ecnumpy\x0adtype\x0aq\x0fX\x02\x00\x00\x00u1q\x10\x89\x88\x87q\x11Rq\x12(K\x03X\x01\x00\x00\x00|q\x13NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x14b\x89h\x01X\x0c\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0bq\x15h\x03\x86q\x16Rq\x17tq\x18bh\x01X\x0b\x00\x00\x00fine_labelsq\x19h\x03\x86q\x1aRq\x1b]q\x1c(K\x03K\x07eX\x01\x00\x00\x00xq\x1dK\x01u.";

/// `pickle.dumps(np.array([1, 2], dtype=np.int64), protocol=2)`, same Python.
const PYTHON3_INT64_ARRAY: &[u8] = b"\x80\x02cnumpy._core.multiarray\x0a_reconstruct\x0aq\x00cnumpy\x0andarray\x0aq\x01K\x00\x85q\x02c_codecs\x0aencode\x0aq\x03X\x01\x00\x00\x00bq\x04X\x06\x00\x00\x00latin1q\x05\x86q\x06Rq\x07\x87q\x08Rq\x09(K\x01K\x02\x85q\x0acnumpy\x0adtype\x0aq\x0bX\x02\x00\x00\x00i8q\x0c\x89\x88\x87q\x0dRq\x0e(K\x03X\x01\x00\x00\x00<q\x0fNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x10b\x89h\x03X\x10\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00q\x11h\x05\x86q\x12Rq\x13tq\x14b.";

#[test]
fn pickles_written_by_python3_numpy_are_understood() {
    let value = pickle::parse(PYTHON3_PICKLE).unwrap();
    let Some(PickleValue::Array(data)) = value.get("data") else { panic!("no array: {value:?}") };
    assert_eq!((data.shape.as_slice(), data.dtype.as_str()), (&[2usize, 6][..], "|u1"));
    assert_eq!(&data.data[..], &(0u8..12).collect::<Vec<_>>()[..]);
    assert_eq!(value.get("fine_labels").unwrap().to_integers(), Some(vec![3, 7]));
    assert_eq!(value.get("x"), Some(&PickleValue::Int(1)));
    let PickleValue::Array(array) = pickle::parse(PYTHON3_INT64_ARRAY).unwrap() else { panic!("not an array") };
    assert_eq!((array.dtype.as_str(), array.to_integers()), ("<i8", Some(vec![1, 2])));
}

#[test]
fn unsupported_or_broken_pickles_fail_with_the_offset() {
    let error = pickle::parse(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap_err();
    assert!(error.to_string().contains("unsupported call os.system"), "{error}");
    let error = pickle::parse(b"\x80\x02]q\x00(K\x01").unwrap_err();
    assert!(error.to_string().contains("truncated") || error.to_string().contains("byte 8"), "{error}");
    let error = pickle::parse(b"\x80\x02\xff").unwrap_err();
    assert_eq!(error.offset, 2);
    assert!(error.to_string().contains("unsupported opcode 0xff"), "{error}");
}

fn idx_bytes(magic_rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, magic_rank];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn write_fashion(root: &Path, prefix: &str, count: usize, gzipped: bool) {
    let images: Vec<u8> = (0..count * 784).map(|k| (k % 251) as u8).collect();
    let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    let files = [
        (format!("{prefix}-images-idx3-ubyte"), idx_bytes(3, &[count as u32, 28, 28], &images)),
        (format!("{prefix}-labels-idx1-ubyte"), idx_bytes(1, &[count as u32], &labels)),
    ];
    for (name, bytes) in files {
        if gzipped {
            std::fs::write(root.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(root.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn fashion_mnist_idx_files_are_read_gzipped_or_plain() {
    let root = scratch("fashion");
    write_fashion(&root, "train", 60, true);
    write_fashion(&root, "t10k", 20, false);
    let long_tail = LongTail::new(0.5, ImbalanceProfile::Exp).unwrap();
    let splits = fashion_mnist::load_long_tailed(&root, &long_tail).unwrap();
    assert_eq!(splits.probe_train.len(), 60);
    assert_eq!(splits.test.len(), 20);
    assert_eq!(splits.train.class_counts(), long_tail.counts(6, 10));
    let image = splits.probe_train.image(1).unwrap();
    assert_eq!((image.channels(), image.height(), image.width()), (1, 28, 28));
    assert_eq!(image.get(0, 0, 0), f32::from((784 % 251) as u8) / 255.0);
    assert_eq!(splits.test.class_names().unwrap()[9], "Ankle boot");
}

#[test]
fn broken_idx_files_are_refused_and_missing_ones_point_to_the_package() {
    let root = scratch("fashion_bad");
    let text = message(fashion_mnist::read_train(&root).unwrap_err());
    assert!(
        text.contains("apt-get install dataset-fashion-mnist") && text.contains("train-images-idx3-ubyte"),
        "{text}"
    );
    write_fashion(&root, "train", 10, false);
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx_bytes(1, &[11], &[0; 11])).unwrap();
    let text = message(fashion_mnist::read_train(&root).unwrap_err());
    assert!(text.contains("11 labels") && text.contains("one label per image"), "{text}");
    std::fs::write(root.join("train-images-idx3-ubyte"), idx_bytes(3, &[10, 28, 28], &[0; 100])).unwrap();
    let text = message(fashion_mnist::read_train(&root).unwrap_err());
    assert!(text.contains("do not match") && text.contains("magic 00 00 08 03"), "{text}");
    std::fs::write(root.join("train-images-idx3-ubyte"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
    let text = message(fashion_mnist::read_train(&root).unwrap_err());
    assert!(text.contains("gzip stream is corrupt"), "{text}");
}

#[test]
fn installed_fashion_mnist_is_the_balanced_60000_10000() {
    let root = Path::new(fashion_mnist::DEFAULT_ROOT);
    if !root.join("train-images-idx3-ubyte.gz").is_file() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must install dataset-fashion-mnist ({} is missing)",
            root.display()
        );
        eprintln!(
            "SKIPPED installed_fashion_mnist: {} is absent (apt-get install dataset-fashion-mnist)",
            root.display()
        );
        return;
    }
    let long_tail = LongTail::new(0.01, ImbalanceProfile::Exp).unwrap();
    let splits = fashion_mnist::load_long_tailed(root, &long_tail).unwrap();
    assert_eq!(splits.probe_train.class_counts(), vec![6000; 10]);
    assert_eq!(splits.test.class_counts(), vec![1000; 10]);
    assert_eq!(splits.train.len(), 14_886);
    assert_eq!(splits.train.class_counts()[9], 60);
    assert_eq!(&splits.probe_train.labels()[..5], &[9, 0, 0, 3, 0]);
}

fn write_png(path: &Path, width: u32, height: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(width, height, image::Rgb(rgb)).save(path).unwrap();
}

#[test]
fn image_lists_decode_png_and_jpeg_lazily() {
    let root = scratch("lists");
    let images = root.join("images");
    write_png(&images.join("train/a/1.png"), 5, 4, [255, 0, 51]);
    write_png(&images.join("train/b/2.jpg"), 8, 6, [128, 128, 128]);
    let list = root.join("mine.txt");
    std::fs::write(&list, "train/a/1.png 0\n\ntrain/b/2.jpg 364\n").unwrap();
    let lists = ListFiles { train: list.clone(), probe_train: list.clone(), test: list };
    let splits = image_list::load(Benchmark::PlacesLt, &images, &lists).unwrap();
    assert_eq!(splits.train.labels(), &[0, 364]);
    assert_eq!(splits.train.class_count(), 365);
    let png = splits.train.image(0).unwrap();
    assert_eq!((png.channels(), png.height(), png.width()), (3, 4, 5));
    assert_eq!((png.get(0, 0, 0), png.get(1, 3, 4), png.get(2, 2, 2)), (1.0, 0.0, 0.2));
    let jpeg = splits.test.image(1).unwrap();
    assert_eq!((jpeg.height(), jpeg.width()), (6, 8));
    assert!((jpeg.get(1, 2, 3) - 128.0 / 255.0).abs() < 3.0 / 255.0);
}

#[test]
fn bad_lists_and_missing_images_name_the_file() {
    let root = scratch("lists_bad");
    let list = root.join("ImageNet_LT_train.txt");
    let text = message(image_list::read_list(&list, 1000).unwrap_err());
    assert!(text.contains("ImageNet_LT_train.txt") && text.contains("OLTR"), "{text}");
    std::fs::write(&list, "a.jpg 1\nb.jpg one\n").unwrap();
    let text = message(image_list::read_list(&list, 1000).unwrap_err());
    assert!(text.contains("line 2") && text.contains("`b.jpg one`"), "{text}");
    std::fs::write(&list, "a.jpg 1000\n").unwrap();
    assert!(message(image_list::read_list(&list, 1000).unwrap_err()).contains("below 1000"));
    std::fs::write(&list, "missing/a.jpg 3\n").unwrap();
    let lists = ListFiles { train: list.clone(), probe_train: list.clone(), test: list };
    let splits = image_list::load(Benchmark::ImageNetLt, &root, &lists).unwrap();
    let text = message(splits.train.image(0).unwrap_err());
    assert!(text.contains("missing/a.jpg") && text.contains("image root"), "{text}");
    std::fs::write(root.join("broken.png"), b"not a png").unwrap();
    let text = message(image_list::decode_rgb(&root.join("broken.png")).unwrap_err());
    assert!(text.contains("broken.png") && text.contains("cannot decode"), "{text}");
}

#[test]
fn benchmarks_are_found_by_name_and_split_for_the_cli() {
    assert_eq!(DatasetName::from_name("cifar100").unwrap(), DatasetName::Cifar100);
    assert_eq!(DatasetName::from_name("places-lt").unwrap(), DatasetName::PlacesLt);
    let text = message(DatasetName::from_name("mnist").unwrap_err());
    assert!(text.contains("`mnist` is not one of digits-lt, cifar10-lt"), "{text}");

    let root = scratch("cli_split");
    write_cifar100_binary(&root, 10);
    let long_tail = LongTail::new(0.1, ImbalanceProfile::Step).unwrap();
    let options = DataOptions { root: Some(root), long_tail: Some(long_tail), ..DataOptions::default() };
    let listing = split_listing(DatasetName::Cifar100, &options).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines[0], "# cifar100-lt: long-tailed subset, imbalance 0.1 (step), 550 of 1000 training images");
    assert_eq!(lines.len(), 2 + 50 * 10 + 50);
    assert!(lines[2..].iter().all(|l| l.split(' ').count() == 2));
    assert_eq!(load(DatasetName::Cifar100, &options).unwrap().train.len(), 550);

    let text = message(load(DatasetName::Cifar10, &DataOptions::default()).unwrap_err());
    assert!(text.contains("cifar10-lt needs a data root"), "{text}");
    let text = message(split_listing(DatasetName::ImageNetLt, &DataOptions::default()).unwrap_err());
    assert!(text.contains("fixed by its list files"), "{text}");
    let digits = load(DatasetName::Digits, &DataOptions::default()).unwrap();
    assert_eq!((digits.train.len(), digits.probe_train.len(), digits.test.len()), (503, 1240, 500));
    assert_eq!(split_listing(DatasetName::Digits, &DataOptions::default()).unwrap().lines().count(), 2 + 503);
}

/// A PNG chunk: length, type, data, CRC-32 of type and data.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    let mut crc = 0xffff_ffffu32;
    for &byte in &body {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

/// An image of 0x0 pixels is a clean error naming the file (issue: a loader thread panicked
/// in the resampler on one), whether or not the decoder accepts it.
#[test]
fn a_zero_size_image_is_an_error_not_a_panic() {
    let dir = scratch("zero-size-image");
    let path = dir.join("empty.png");
    let mut png = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    let mut header = Vec::new();
    header.extend_from_slice(&0u32.to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend(png_chunk(b"IHDR", &header));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(png_chunk(b"IEND", &[]));
    std::fs::write(&path, &png).expect("write");
    let result = std::panic::catch_unwind(|| image_list::decode_rgb(&path));
    let error = result.expect("no panic").expect_err("a 0x0 image is refused");
    assert!(message(error).contains("empty.png"));
}
