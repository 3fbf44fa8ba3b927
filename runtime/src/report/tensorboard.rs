//! TensorBoard event files (`events.out.tfevents.<time>.<host>.<pid>`), written beside
//! `metrics.jsonl` so that `tensorboard --logdir runs/` shows every run: the per-step scalars
//! under the same names as `metrics.jsonl`, each epoch's means under `epoch/<name>`, each
//! evaluation's accuracies, `per_class.png` as an image and the run's hyper-parameters in the
//! HPARAMS tab.
//!
//! Why our own framing on `prost` rather than a TensorBoard crate: the crates that write event
//! files are unmaintained or pull a protobuf code generator (protoc) into the build, while the
//! format is small and fixed. A file is a sequence of TFRecords (length as u64 LE, masked
//! CRC-32C of the length, the bytes, masked CRC-32C of the bytes) holding serialized `Event`
//! messages. The few messages needed are declared below with `#[derive(prost::Message)]`,
//! field numbers copied from TensorBoard's `.proto` files (event.proto, summary.proto,
//! plugins/hparams/{api,plugin_data}.proto), so the build needs no protoc; `crc32c` supplies
//! the checksum (hardware-accelerated). The test suite reads the files back with the real
//! `tensorboard` Python package.
//!
//! A failing write never stops a run: the first failure prints one warning and the writer
//! goes quiet; metrics.jsonl and the checkpoint are the run's record.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use serde_json::{Map, Value};

/// What every TensorBoard event file starts with; version 2 makes readers honour the
/// `SessionLog::START` a resumed run writes (see [`TensorBoard::create`]).
const FILE_VERSION: &str = "brain.Event:2";
/// The prefix TensorBoard looks for in a run directory.
pub const EVENTS_FILE_PREFIX: &str = "events.out.tfevents.";

// The hparams plugin's tags and plugin-data version (tensorboard/plugins/hparams/metadata.py).
const HPARAMS_PLUGIN: &str = "hparams";
const HPARAMS_VERSION: i32 = 0;
const EXPERIMENT_TAG: &str = "_hparams_/experiment";
const SESSION_START_TAG: &str = "_hparams_/session_start_info";
const SESSION_END_TAG: &str = "_hparams_/session_end_info";

/// `metrics.jsonl` fields that place a line rather than measure something.
const BOOKKEEPING: [&str; 3] = ["kind", "epoch", "step"];

/// CRC-32C of `data`, masked as TFRecord does (so that a CRC of data holding CRCs stays
/// well-distributed).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: the frame around each serialized event.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

/// Splits a file's bytes back into its records' data, checking both CRCs (for tests and for
/// reading an events file back).
pub fn read_tfrecords(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 12 {
            return Err(format!("{} trailing bytes, less than a record header", bytes.len()));
        }
        let (length, rest) = bytes.split_at(8);
        let crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if crc != masked_crc32c(length) {
            return Err("a record's length fails its CRC".into());
        }
        let length = u64::from_le_bytes(length.try_into().expect("8 bytes")) as usize;
        let rest = &rest[4..];
        if rest.len() < length.saturating_add(4) {
            return Err(format!("a record promises {length} bytes but {} remain", rest.len()));
        }
        let (data, rest) = rest.split_at(length);
        if u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) != masked_crc32c(data) {
            return Err("a record's data fails its CRC".into());
        }
        records.push(data.to_vec());
        bytes = &rest[4..];
    }
    Ok(records)
}

/// tensorboard.Event (event.proto).
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5, 7")]
    pub what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// tensorboard.SessionLog: `START` (1) at a step tells readers to drop what an earlier, crashed
/// session logged at that step and after.
#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
}
const SESSION_LOG_START: i32 = 1;

/// tensorboard.Summary.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// tensorboard.Summary.Value.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(oneof = "SummaryKind", tags = "2, 4")]
    pub value: Option<SummaryKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SummaryKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(SummaryImage),
}

/// tensorboard.Summary.Image: an encoded PNG and its size.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryImage {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// tensorboard.SummaryMetadata (only its plugin data).
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// tensorboard.hparams.HParamsPluginData (plugin_data.proto).
#[derive(Clone, PartialEq, Message)]
pub struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(oneof = "HParamsData", tags = "2, 3, 4")]
    pub data: Option<HParamsData>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HParamsData {
    #[prost(message, tag = "2")]
    Experiment(Experiment),
    #[prost(message, tag = "3")]
    SessionStartInfo(SessionStartInfo),
    #[prost(message, tag = "4")]
    SessionEndInfo(SessionEndInfo),
}

/// tensorboard.hparams.Experiment (api.proto): the table's columns.
#[derive(Clone, PartialEq, Message)]
pub struct Experiment {
    #[prost(double, tag = "3")]
    pub time_created_secs: f64,
    #[prost(message, repeated, tag = "4")]
    pub hparam_infos: Vec<HParamInfo>,
    #[prost(message, repeated, tag = "5")]
    pub metric_infos: Vec<MetricInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HParamInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    /// DataType: 1 string, 2 bool, 3 float64.
    #[prost(int32, tag = "4")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricInfo {
    #[prost(message, optional, tag = "1")]
    pub name: Option<MetricName>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricName {
    /// The run-relative group ("" for the run itself).
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(string, tag = "2")]
    pub tag: String,
}

/// tensorboard.hparams.SessionStartInfo: one run's hyper-parameter values.
#[derive(Clone, PartialEq, Message)]
pub struct SessionStartInfo {
    #[prost(map = "string, message", tag = "1")]
    pub hparams: HashMap<String, ProtoValue>,
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

/// tensorboard.hparams.SessionEndInfo; status 1 is STATUS_SUCCESS.
#[derive(Clone, PartialEq, Message)]
pub struct SessionEndInfo {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

/// google.protobuf.Value, the three kinds a hyper-parameter takes.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoValue {
    #[prost(oneof = "ProtoKind", tags = "2, 3, 4")]
    pub kind: Option<ProtoKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ProtoKind {
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
}

/// A run's hyper-parameters from its identity JSON (`RunIdentity::to_json`): every leaf under
/// a dotted path, with the `train.` and `train.context.` prefixes dropped for readability
/// (`dataset`, `base_lr`, `encoder.backbone`). Lists become one comma-separated string (`set`
/// = "K=16,tau=0.1"), nulls are left out.
pub fn hparams_of(identity: &Value) -> Vec<(String, ProtoKind)> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, ProtoKind)>) {
        let name = prefix.strip_prefix("train.context.").or_else(|| prefix.strip_prefix("train.")).unwrap_or(prefix);
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&path, child, out);
                }
            }
            Value::Null => {}
            Value::Bool(b) => out.push((name.to_string(), ProtoKind::Bool(*b))),
            Value::Number(n) => out.push((name.to_string(), ProtoKind::Number(n.as_f64().unwrap_or(f64::NAN)))),
            Value::String(s) => out.push((name.to_string(), ProtoKind::String(s.clone()))),
            Value::Array(items) => {
                let text: Vec<String> = items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                out.push((name.to_string(), ProtoKind::String(text.join(","))));
            }
        }
    }
    let mut out = Vec::new();
    walk("", identity, &mut out);
    out
}

/// An events file being written. Every method logs and carries on: see the module docs.
pub struct TensorBoard {
    path: PathBuf,
    file: Option<File>,
}

impl TensorBoard {
    /// Starts a new events file in `dir` for a run that has `steps_done` optimisation steps
    /// behind it (steps are numbered from 1). A run starting afresh (0) first removes earlier
    /// events files, as `metrics.jsonl` is emptied; a resumed run adds a file (TensorBoard
    /// reads all of a directory's files in name order) that begins with `SessionLog::START` at
    /// `steps_done + 1`, which tells readers to drop what the interrupted run had logged from
    /// that step on, so no step appears twice.
    pub fn create(dir: &Path, steps_done: u64) -> TensorBoard {
        if steps_done == 0 {
            for old in events_files(dir) {
                if let Err(e) = std::fs::remove_file(&old) {
                    eprintln!("warning: cannot remove the earlier TensorBoard file {}: {e}", old.display());
                }
            }
        }
        let now = wall_time();
        let path = dir.join(format!("{EVENTS_FILE_PREFIX}{}.{}.{}", now as u64, host_name(), std::process::id()));
        let file = match File::options().create_new(true).write(true).open(&path) {
            Ok(file) => Some(file),
            Err(e) => {
                warn_failed(&path, &e);
                None
            }
        };
        let mut writer = TensorBoard { path, file };
        writer.write(Event { wall_time: now, step: 0, what: Some(EventWhat::FileVersion(FILE_VERSION.into())) });
        writer.write(Event {
            wall_time: now,
            step: steps_done as i64 + 1,
            what: Some(EventWhat::SessionLog(SessionLog { status: SESSION_LOG_START })),
        });
        writer
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: Event) {
        let Some(file) = self.file.as_mut() else { return };
        let bytes = tfrecord(&event.encode_to_vec());
        if let Err(e) = file.write_all(&bytes).and_then(|()| file.flush()) {
            warn_failed(&self.path, &e);
            self.file = None;
        }
    }

    fn summary(&mut self, step: u64, values: Vec<SummaryValue>) {
        if values.is_empty() {
            return;
        }
        let what = Some(EventWhat::Summary(Summary { value: values }));
        self.write(Event { wall_time: wall_time(), step: step as i64, what });
    }

    /// The numeric fields of one `metrics.jsonl` line as scalars named `prefix` + field.
    pub fn scalars(&mut self, step: u64, prefix: &str, line: &Map<String, Value>) {
        let values = line
            .iter()
            .filter(|(key, _)| !BOOKKEEPING.contains(&key.as_str()))
            .filter_map(|(key, value)| Some((key, value.as_f64()?)))
            .map(|(key, value)| SummaryValue {
                tag: format!("{prefix}{key}"),
                metadata: None,
                value: Some(SummaryKind::SimpleValue(value as f32)),
            })
            .collect();
        self.summary(step, values);
    }

    /// A PNG file as an image summary; a missing or unreadable file is a warning.
    pub fn png(&mut self, step: u64, tag: &str, png: &Path) {
        let bytes = match std::fs::read(png) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("warning: cannot add {} to TensorBoard: {e}", png.display());
                return;
            }
        };
        // The IHDR chunk, first after the 8-byte signature: width and height big-endian, then
        // bit depth and colour type.
        let Some((width, height, colour)) = (bytes.len() >= 26 && &bytes[12..16] == b"IHDR").then(|| {
            let be = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            (be(16), be(20), bytes[25])
        }) else {
            eprintln!("warning: {} is not a PNG file; it is left out of TensorBoard", png.display());
            return;
        };
        let colorspace = match colour {
            0 => 1,
            4 => 2,
            6 => 4,
            _ => 3,
        };
        let image = SummaryImage { height, width, colorspace, encoded_image_string: bytes };
        self.summary(
            step,
            vec![SummaryValue { tag: tag.into(), metadata: None, value: Some(SummaryKind::Image(image)) }],
        );
    }

    fn hparams_summary(&mut self, tag: &str, data: HParamsData) {
        let content = HParamsPluginData { version: HPARAMS_VERSION, data: Some(data) }.encode_to_vec();
        let metadata =
            SummaryMetadata { plugin_data: Some(PluginData { plugin_name: HPARAMS_PLUGIN.into(), content }) };
        self.summary(0, vec![SummaryValue { tag: tag.into(), metadata: Some(metadata), value: None }]);
    }

    /// The run's hyper-parameters ([`hparams_of`]) and the metrics the HPARAMS table shows
    /// next to them (scalar tags of this run).
    pub fn hparams(&mut self, identity: &Value, metric_tags: &[String]) {
        let hparams = hparams_of(identity);
        let hparam_infos = hparams
            .iter()
            .map(|(name, kind)| HParamInfo {
                name: name.clone(),
                r#type: match kind {
                    ProtoKind::String(_) => 1,
                    ProtoKind::Bool(_) => 2,
                    ProtoKind::Number(_) => 3,
                },
            })
            .collect();
        let metric_infos = metric_tags
            .iter()
            .map(|tag| MetricInfo { name: Some(MetricName { group: String::new(), tag: tag.clone() }) })
            .collect();
        let now = wall_time();
        let experiment = Experiment { time_created_secs: now, hparam_infos, metric_infos };
        self.hparams_summary(EXPERIMENT_TAG, HParamsData::Experiment(experiment));
        let hparams = hparams.into_iter().map(|(name, kind)| (name, ProtoValue { kind: Some(kind) })).collect();
        let start = SessionStartInfo { hparams, start_time_secs: now };
        self.hparams_summary(SESSION_START_TAG, HParamsData::SessionStartInfo(start));
    }

    /// Marks the run finished in the HPARAMS table.
    pub fn session_succeeded(&mut self) {
        let end = SessionEndInfo { status: 1, end_time_secs: wall_time() };
        self.hparams_summary(SESSION_END_TAG, HParamsData::SessionEndInfo(end));
    }
}

/// The events files of `dir`, in TensorBoard's reading order (by name).
pub fn events_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(EVENTS_FILE_PREFIX))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn warn_failed(path: &Path, error: &std::io::Error) {
    eprintln!(
        "warning: cannot write the TensorBoard file {}: {error}; TensorBoard logging stops, the run goes on \
         (metrics.jsonl keeps every metric)",
        path.display()
    );
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's name, as TensorFlow puts it in events file names; `localhost` if unknown.
fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed with it.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name: String = String::from_utf8_lossy(&buffer[..end])
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if ok && !name.is_empty() {
        name
    } else {
        "localhost".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 (iSCSI) B.4's CRC-32C vectors, and TensorFlow's masking of one.
    #[test]
    fn crc32c_matches_known_vectors() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c::crc32c(&ascending), 0x46dd_794e);
        // mask(crc) = rotr15(crc) + 0xa282ead8, as TensorFlow's crc32c::Mask.
        assert_eq!(masked_crc32c(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let event = Event { wall_time: 1.5, step: 7, what: Some(EventWhat::FileVersion(FILE_VERSION.into())) };
        let mut file = tfrecord(&event.encode_to_vec());
        file.extend(tfrecord(b""));
        let records = read_tfrecords(&file).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(Event::decode(records[0].as_slice()).unwrap(), event);
        assert!(records[1].is_empty());
        // Header: the length, then its masked CRC.
        assert_eq!(&file[..8], &(event.encode_to_vec().len() as u64).to_le_bytes());
        let mut damaged = file.clone();
        damaged[14] ^= 1;
        assert!(read_tfrecords(&damaged).is_err());
        assert!(read_tfrecords(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn hparams_flatten_the_run_identity() {
        let identity = serde_json::json!({
            "objective": "simclr_gh",
            "train": {"epochs": 2, "base_lr": 0.5, "context": {"dataset": "digits", "set": ["K=16", "tau=0.1"], "data": null}},
            "encoder": {"backbone": "small_conv", "pruned_branch": false},
        });
        let hparams: HashMap<String, ProtoKind> = hparams_of(&identity).into_iter().collect();
        assert_eq!(hparams["objective"], ProtoKind::String("simclr_gh".into()));
        assert_eq!(hparams["epochs"], ProtoKind::Number(2.0));
        assert_eq!(hparams["dataset"], ProtoKind::String("digits".into()));
        assert_eq!(hparams["set"], ProtoKind::String("K=16,tau=0.1".into()));
        assert_eq!(hparams["encoder.pruned_branch"], ProtoKind::Bool(false));
        assert!(!hparams.contains_key("data"));
    }

    #[test]
    fn a_file_that_cannot_be_created_is_a_warning_not_a_failure() {
        let mut writer = TensorBoard::create(Path::new("/nonexistent-sslc-dir/sub"), 0);
        writer.scalars(1, "", &serde_json::from_str(r#"{"loss": 1.0}"#).unwrap());
        writer.session_succeeded();
        assert!(writer.file.is_none());
    }
}
