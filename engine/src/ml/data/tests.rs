use super::*;

fn synth(classes: u32, dim: usize, seed: u64) -> DataSource {
    DataSource::Synthetic {
        classes,
        dim,
        train_per_class: 10,
        test_per_class: 5,
        seed,
    }
}

fn spec(source: DataSource, train: &[u32], eval: &[u32]) -> DataSpec {
    DataSpec {
        source,
        train_classes: train.to_vec(),
        eval_classes: eval.to_vec(),
        train_limit: None,
        eval_limit: None,
        transforms: Vec::new(),
    }
}

#[test]
fn idx_roundtrip_gz_and_plain_and_class_filter() {
    let dir = tempfile::tempdir().unwrap();
    let imgs: Vec<u8> = (0..6 * 4).map(|v| v as u8 * 10).collect();
    let labs = vec![0u8, 1, 2, 0, 1, 2];
    for ext in ["", ".gz"] {
        let ip = dir.path().join(format!("i{ext}"));
        let lp = dir.path().join(format!("l{ext}"));
        write_idx(&ip, &[6, 2, 2], &imgs).unwrap();
        write_idx(&lp, &[6], &labs).unwrap();
        let s = read_idx_pair(&ip, &lp).unwrap();
        assert_eq!(s.dim, 4);
        assert_eq!(s.shape, (1, 2, 2));
        assert_eq!(s.len(), 6);
        assert_eq!(s.row(1)[0], 40.0 / 255.0);
        let f = s.select(&filter_indices(&s.y, &[2], None));
        assert_eq!(f.y, vec![2, 2]);
        assert_eq!(f.row(1), s.row(5));
        assert_eq!(filter_indices(&s.y, &[1, 2], Some(3)), vec![1, 2, 4]);
    }
}

#[test]
fn idx_shapes_follow_the_file_dimensions() {
    assert_eq!(idx_shape(&[7]), (1, 1, 7));
    assert_eq!(idx_shape(&[28, 28]), (1, 28, 28));
    assert_eq!(idx_shape(&[3, 32, 32]), (3, 32, 32));
    assert_eq!(idx_shape(&[2, 3, 4, 5]), (6, 4, 5));
}

#[test]
fn idx_errors_name_the_problem() {
    let p = Path::new("x.idx");
    let e = parse_idx(p, &[1, 2, 3]).unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");
    let e = parse_idx(p, &[0, 0, 8, 1, 0, 0, 0, 5, 1, 2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("need 5 data bytes"), "{e}");
    let e = parse_idx(p, &[0, 0, 0x0d, 1, 0, 0, 0, 0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("0x0d"), "{e}");
}

/// Dimensions whose product overflows a `usize` are an error naming the file, not a
/// wrapped size (4 · 2^31 · 2^31 = 2^64 wraps to 0, which an empty data part matched).
#[test]
fn idx_dimensions_that_overflow_are_refused() {
    let p = Path::new("damaged-images-idx3-ubyte");
    let header = |dims: &[u32]| {
        let mut b = vec![0u8, 0, 0x08, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    };
    for dims in [
        &[4, 0x8000_0000, 0x8000_0000][..],
        &[0x8000_0000, 0x8000_0000, 0x8000_0000, 0][..],
        // No samples, but one sample's size alone overflows.
        &[0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff][..],
    ] {
        let e = parse_idx(p, &header(dims)).unwrap_err().to_string();
        assert!(e.contains("damaged-images-idx3-ubyte"), "{e}");
        assert!(e.contains("multiply past"), "{e}");
    }
    // Through the loader, as a stage reads it: an error, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images.idx");
    let labels = dir.path().join("labels.idx");
    std::fs::write(&images, header(&[4, 0x8000_0000, 0x8000_0000])).unwrap();
    write_idx(&labels, &[4], &[0, 1, 2, 3]).unwrap();
    let e = read_idx_pair(&images, &labels).err().unwrap().to_string();
    assert!(
        e.contains("images.idx") && e.contains("multiply past"),
        "{e}"
    );
}

#[test]
fn synthetic_is_deterministic_and_balanced() {
    let src = synth(4, 12, 3);
    let mut spec = spec(src.clone(), &[0, 1], &[2, 3]);
    spec.eval_limit = Some(6);
    let a = load(&spec).unwrap();
    let b = load(&spec).unwrap();
    assert_eq!(a.train.x, b.train.x);
    assert_eq!(a.train.len(), 20);
    assert_eq!(a.train.shape, (1, 1, 12));
    assert_eq!(a.eval.y, vec![2, 3, 2, 3, 2, 3]);
    assert_eq!(src.fingerprint().unwrap(), src.fingerprint().unwrap());
    assert_ne!(
        src.fingerprint().unwrap(),
        synth(4, 12, 4).fingerprint().unwrap()
    );
}

#[test]
fn empty_class_filter_is_an_error() {
    let spec = spec(synth(2, 4, 0), &[0], &[7]);
    let e = load(&spec).unwrap_err().to_string();
    assert!(e.contains("[7]"), "{e}");
}

/// Cache keys are SHA-256 of these serialisations: the strings were captured from the code
/// before CIFAR and transforms existed and must never change.
#[test]
fn spec_without_transforms_serialises_as_before() {
    let s = DataSpec {
        source: DataSource::Synthetic {
            classes: 4,
            dim: 6,
            train_per_class: 3,
            test_per_class: 2,
            seed: 9,
        },
        train_classes: vec![0, 1],
        eval_classes: vec![2, 3],
        train_limit: Some(5),
        eval_limit: None,
        transforms: Vec::new(),
    };
    let json = r#"{"source":{"kind":"synthetic","classes":4,"dim":6,"train_per_class":3,"test_per_class":2,"seed":9},"train_classes":[0,1],"eval_classes":[2,3],"train_limit":5,"eval_limit":null}"#;
    assert_eq!(serde_json::to_string(&s).unwrap(), json);
    assert_eq!(serde_json::from_str::<DataSpec>(json).unwrap(), s);
    let fm = DataSpec {
        source: DataSource::FashionMnist {
            path: "/d/fm".into(),
        },
        train_classes: vec![0],
        eval_classes: vec![1],
        train_limit: None,
        eval_limit: Some(7),
        transforms: Vec::new(),
    };
    assert_eq!(
        serde_json::to_string(&fm).unwrap(),
        r#"{"source":{"kind":"fashion-mnist","path":"/d/fm"},"train_classes":[0],"eval_classes":[1],"train_limit":null,"eval_limit":7}"#
    );
    // With transforms, they come last.
    let mut t = s.clone();
    t.transforms = vec![Transform::Invert];
    let tj = serde_json::to_string(&t).unwrap();
    assert!(
        tj.starts_with(&json[..json.len() - 1]),
        "{tj} does not extend {json}"
    );
    assert!(
        tj.ends_with(r#","transforms":[{"kind":"invert"}]}"#),
        "{tj}"
    );
}

#[test]
fn serde_shapes_of_cifar_sources_and_transforms() {
    let cases: Vec<(DataSource, &str)> = vec![
        (
            DataSource::Cifar10 {
                path: "/data/cifar".into(),
            },
            r#"{"kind":"cifar10","path":"/data/cifar"}"#,
        ),
        (
            DataSource::Cifar100 {
                path: "/data/c100".into(),
                labels: CifarLabels::Fine,
            },
            r#"{"kind":"cifar100","path":"/data/c100","labels":"fine"}"#,
        ),
        (
            DataSource::Cifar100 {
                path: "/data/c100".into(),
                labels: CifarLabels::Coarse,
            },
            r#"{"kind":"cifar100","path":"/data/c100","labels":"coarse"}"#,
        ),
    ];
    for (src, json) in cases {
        assert_eq!(serde_json::to_string(&src).unwrap(), json);
        assert_eq!(serde_json::from_str::<DataSource>(json).unwrap(), src);
    }
    let ts = vec![
        Transform::Invert,
        Transform::Rotate { degrees: 90.0 },
        Transform::Noise { std: 0.1, seed: 7 },
        Transform::Subsample {
            fraction: 0.25,
            seed: 3,
        },
    ];
    let json = r#"[{"kind":"invert"},{"kind":"rotate","degrees":90.0},{"kind":"noise","std":0.1,"seed":7},{"kind":"subsample","fraction":0.25,"seed":3}]"#;
    assert_eq!(serde_json::to_string(&ts).unwrap(), json);
    assert_eq!(serde_json::from_str::<Vec<Transform>>(json).unwrap(), ts);
    for bad in [
        r#"{"kind":"rotate","degrees":1,"extra":2}"#,
        r#"{"kind":"flip"}"#,
        r#"{"kind":"invert","degrees":1}"#,
        r#"{"kind":"noise","std":0.1}"#,
    ] {
        assert!(serde_json::from_str::<Transform>(bad).is_err(), "{bad}");
    }
    assert!(serde_json::from_str::<DataSource>(r#"{"kind":"cifar100","path":"x"}"#).is_err());
}

#[test]
fn n_classes_and_shape_without_reading_files() {
    let p = PathBuf::from("/nowhere");
    let fm = DataSource::FashionMnist { path: p.clone() };
    let c10 = DataSource::Cifar10 { path: p.clone() };
    let fine = DataSource::Cifar100 {
        path: p.clone(),
        labels: CifarLabels::Fine,
    };
    let coarse = DataSource::Cifar100 {
        path: p.clone(),
        labels: CifarLabels::Coarse,
    };
    let idx = DataSource::Idx {
        train_images: p.clone(),
        train_labels: p.clone(),
        test_images: p.clone(),
        test_labels: p,
    };
    assert_eq!(fm.n_classes(), Some(10));
    assert_eq!(c10.n_classes(), Some(10));
    assert_eq!(fine.n_classes(), Some(100));
    assert_eq!(coarse.n_classes(), Some(20));
    assert_eq!(synth(7, 5, 0).n_classes(), Some(7));
    assert_eq!(idx.n_classes(), None);
    assert_eq!(fm.shape(), Some((1, 28, 28)));
    assert_eq!(c10.shape(), Some((3, 32, 32)));
    assert_eq!(coarse.shape(), Some((3, 32, 32)));
    assert_eq!(synth(7, 5, 0).shape(), Some((1, 1, 5)));
    assert_eq!(idx.shape(), None);
}

/// A CIFAR record: label bytes, then a recognisable picture — pixel (c, r, col) of
/// sample `tag` is (tag + 7c + 3r + col) mod 256.
fn cifar_record(labels: &[u8], tag: u8) -> Vec<u8> {
    let mut rec = labels.to_vec();
    for c in 0..3usize {
        for r in 0..32usize {
            for col in 0..32usize {
                rec.push((tag as usize + 7 * c + 3 * r + col) as u8);
            }
        }
    }
    rec
}

fn expected_pixel(tag: u8, c: usize, r: usize, col: usize) -> f32 {
    f32::from((tag as usize + 7 * c + 3 * r + col) as u8) / 255.0
}

/// Six CIFAR-10 files; batch b holds two records with labels (2b, 2b+1) mod 10 and tags
/// 10b, 10b+1; the test batch holds labels 9, 0, 5.
fn write_cifar10(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for b in 1..=5u8 {
        let mut bytes = cifar_record(&[(2 * b) % 10], 10 * b);
        bytes.extend(cifar_record(&[(2 * b + 1) % 10], 10 * b + 1));
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let mut test = cifar_record(&[9], 200);
    test.extend(cifar_record(&[0], 201));
    test.extend(cifar_record(&[5], 202));
    std::fs::write(dir.join("test_batch.bin"), test).unwrap();
}

/// CIFAR-100 train: (coarse, fine) = (3, 42), (19, 99), (0, 7); test: (3, 43), (1, 5).
fn write_cifar100(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut train = cifar_record(&[3, 42], 1);
    train.extend(cifar_record(&[19, 99], 2));
    train.extend(cifar_record(&[0, 7], 3));
    std::fs::write(dir.join("train.bin"), train).unwrap();
    let mut test = cifar_record(&[3, 43], 4);
    test.extend(cifar_record(&[1, 5], 5));
    std::fs::write(dir.join("test.bin"), test).unwrap();
}

#[test]
fn cifar10_roundtrip_labels_chw_and_scaling() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path());
    let src = DataSource::Cifar10 {
        path: dir.path().into(),
    };
    let all: Vec<u32> = (0..10).collect();
    let d = load(&spec(src, &all, &all)).unwrap();
    // Batches in order 1..5, records in file order.
    assert_eq!(d.train.y, vec![2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    assert_eq!(d.eval.y, vec![9, 0, 5]);
    assert_eq!(d.train.shape, (3, 32, 32));
    assert_eq!(d.train.dim, 3072);
    let tags = [10u8, 11, 20, 21, 30, 31, 40, 41, 50, 51];
    for (i, &tag) in tags.iter().enumerate() {
        let row = d.train.row(i);
        for (c, r, col) in [(0, 0, 0), (0, 0, 31), (1, 1, 2), (2, 31, 31), (2, 5, 0)] {
            assert_eq!(row[c * 1024 + r * 32 + col], expected_pixel(tag, c, r, col));
        }
        assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // A pixel byte of 255 is exactly 1.0, as in the IDX path.
    assert_eq!(expected_pixel(200, 0, 10, 25), 1.0);
    assert_eq!(d.eval.row(0)[10 * 32 + 25], 1.0);
    let filtered = load(&spec(d_src(dir.path()), &[0, 1], &[5])).unwrap();
    assert_eq!(filtered.train.y, vec![0, 1]);
    assert_eq!(filtered.train.row(0)[0], expected_pixel(50, 0, 0, 0));
    assert_eq!(filtered.eval.y, vec![5]);
    assert_eq!(filtered.eval.row(0)[1024], expected_pixel(202, 1, 0, 0));
}

fn d_src(p: &Path) -> DataSource {
    DataSource::Cifar10 { path: p.into() }
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar100(dir.path());
    let src = |labels| DataSource::Cifar100 {
        path: dir.path().into(),
        labels,
    };
    let all: Vec<u32> = (0..100).collect();
    let fine = load(&spec(src(CifarLabels::Fine), &all, &all)).unwrap();
    assert_eq!(fine.train.y, vec![42, 99, 7]);
    assert_eq!(fine.eval.y, vec![43, 5]);
    assert_eq!(fine.train.shape, (3, 32, 32));
    // Two label bytes precede the pixels.
    assert_eq!(fine.train.row(1)[0], expected_pixel(2, 0, 0, 0));
    assert_eq!(
        fine.eval.row(1)[2 * 1024 + 32 + 1],
        expected_pixel(5, 2, 1, 1)
    );
    let coarse = load(&spec(src(CifarLabels::Coarse), &all[..20], &all[..20])).unwrap();
    assert_eq!(coarse.train.y, vec![3, 19, 0]);
    assert_eq!(coarse.eval.y, vec![3, 1]);
    assert_eq!(coarse.train.x, fine.train.x);
    assert_ne!(
        src(CifarLabels::Fine).fingerprint().unwrap(),
        src(CifarLabels::Coarse).fingerprint().unwrap(),
        "fine and coarse are different data sets and must not share cache keys"
    );
}

#[test]
fn cifar_finds_the_extracted_subdirectory() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(&dir.path().join("cifar-10-batches-bin"));
    write_cifar100(&dir.path().join("cifar-100-binary"));
    let c10 = d_src(dir.path());
    assert_eq!(
        c10.files()[5],
        dir.path().join("cifar-10-batches-bin/test_batch.bin")
    );
    assert_eq!(load(&spec(c10, &[9], &[9])).unwrap().eval.y, vec![9]);
    let c100 = DataSource::Cifar100 {
        path: dir.path().into(),
        labels: CifarLabels::Fine,
    };
    assert_eq!(
        c100.files(),
        vec![
            dir.path().join("cifar-100-binary/train.bin"),
            dir.path().join("cifar-100-binary/test.bin")
        ]
    );
    assert_eq!(load(&spec(c100, &[42], &[5])).unwrap().train.y, vec![42]);
    // Pointing at the sub-directory itself works too.
    let inner = d_src(&dir.path().join("cifar-10-batches-bin"));
    assert_eq!(inner.files(), d_src(dir.path()).files());
}

#[test]
fn cifar_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path());
    let batch3 = dir.path().join("data_batch_3.bin");
    let mut bytes = std::fs::read(&batch3).unwrap();
    bytes.pop();
    std::fs::write(&batch3, &bytes).unwrap();
    let all: Vec<u32> = (0..10).collect();
    let e = load(&spec(d_src(dir.path()), &all, &all))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&batch3.display().to_string()), "{e}");
    assert!(
        e.contains("6145 bytes are not a whole number of 3073-byte records"),
        "{e}"
    );

    // A label out of range names the record.
    let mut bytes = cifar_record(&[3], 0);
    bytes.extend(cifar_record(&[12], 0));
    std::fs::write(&batch3, &bytes).unwrap();
    let e = load(&spec(d_src(dir.path()), &all, &all))
        .unwrap_err()
        .to_string();
    assert!(e.contains("data_batch_3.bin"), "{e}");
    assert!(
        e.contains("record 1") && e.contains("label 12") && e.contains("0..9"),
        "{e}"
    );

    let c100 = DataSource::Cifar100 {
        path: dir.path().into(),
        labels: CifarLabels::Coarse,
    };
    std::fs::write(dir.path().join("train.bin"), cifar_record(&[25, 1], 0)).unwrap();
    std::fs::write(dir.path().join("test.bin"), cifar_record(&[1, 1], 0)).unwrap();
    let e = load(&spec(c100, &[1], &[1])).unwrap_err().to_string();
    assert!(
        e.contains("train.bin") && e.contains("coarse label 25"),
        "{e}"
    );

    // A missing file says what the directory should hold, and spots the Python version.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("data_batch_1"), b"pickle").unwrap();
    let e = load(&spec(d_src(empty.path()), &all, &all))
        .unwrap_err()
        .to_string();
    assert!(e.contains("data_batch_1.bin not found"), "{e}");
    assert!(e.contains("binary version") && e.contains("Python"), "{e}");
}

#[test]
fn cifar_fingerprint_hashes_content_not_location() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_cifar10(&a);
    let before = d_src(&a).fingerprint().unwrap();
    let b = dir.path().join("b");
    std::fs::rename(&a, &b).unwrap();
    assert_eq!(d_src(&b).fingerprint().unwrap(), before);
    // Through the sub-directory discovery too.
    let c = dir.path().join("c");
    std::fs::create_dir(&c).unwrap();
    std::fs::rename(&b, c.join("cifar-10-batches-bin")).unwrap();
    assert_eq!(d_src(&c).fingerprint().unwrap(), before);
    let test = c.join("cifar-10-batches-bin/test_batch.bin");
    let mut bytes = std::fs::read(&test).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&test, bytes).unwrap();
    assert_ne!(d_src(&c).fingerprint().unwrap(), before);
}

/// `n` images of the given shape whose pixels are all distinct values in [0, 1].
fn images(n: usize, shape: (usize, usize, usize)) -> Split {
    let dim = shape.0 * shape.1 * shape.2;
    let total = n * dim;
    Split {
        x: (0..total).map(|i| i as f32 / total as f32).collect(),
        y: (0..n).map(|i| (i % 3) as u32).collect(),
        dim,
        shape,
    }
}

fn apply(ts: &[Transform], s: &Split) -> Split {
    let mut s = s.clone();
    let origin = (0..s.len()).collect();
    apply_transforms(ts, &mut s, origin, "train").unwrap();
    s
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn invert_twice_is_identity() {
    let s = images(4, (1, 3, 3));
    let once = apply(&[Transform::Invert], &s);
    assert_eq!(once.row(0)[0], 1.0);
    assert_eq!(once.row(1)[2], 1.0 - s.row(1)[2]);
    let twice = apply(&[Transform::Invert, Transform::Invert], &s);
    assert!(max_diff(&twice.x, &s.x) < 1e-6);
}

#[test]
fn rotate_identity_quarter_turn_and_full_turn() {
    let s = images(3, (3, 5, 5));
    let rot = |d: f64| apply(&[Transform::Rotate { degrees: d }], &s);
    assert_eq!(rot(0.0).x, s.x);
    assert_eq!(rot(360.0).x, s.x);
    assert_eq!(rot(-720.0).x, s.x);
    // Counter-clockwise as displayed: top-right goes to top-left, top-left to
    // bottom-left, in every channel.
    let r90 = rot(90.0);
    for i in 0..s.len() {
        for c in 0..3 {
            let plane = |x: &Split| x.row(i)[c * 25..(c + 1) * 25].to_vec();
            let (src, dst) = (plane(&s), plane(&r90));
            assert_eq!(dst[0], src[4]); // (0,0) ← (0,4)
            assert_eq!(dst[20], src[0]); // (4,0) ← (0,0)
            assert_eq!(dst[12], src[12]); // the centre stays
            assert_eq!(dst[5 + 3], src[3 * 5 + 3]); // (1,3) ← (3,3)
        }
    }
    // The exact quarter-turn matches the general bilinear path within interpolation.
    assert!(max_diff(&rot(90.000001).x, &r90.x) < 1e-4);
    assert!(max_diff(&rot(359.999999).x, &s.x) < 1e-4);
    // Four quarter turns are the identity; 90 then -90 too.
    let back = apply(
        &[
            Transform::Rotate { degrees: 90.0 },
            Transform::Rotate { degrees: -90.0 },
        ],
        &s,
    );
    assert_eq!(back.x, s.x);
    // 45°: the centre is kept exactly, the corners come from outside (zero fill), and
    // values stay in [0, 1].
    let s7 = images(1, (1, 7, 7));
    let r45 = apply(&[Transform::Rotate { degrees: 45.0 }], &s7);
    assert_eq!(r45.x[24], s7.x[24]);
    assert_eq!(r45.x[0], 0.0); // 4.2 pixels from the centre, sampled from row -1.2
    assert_ne!(r45.x[3], 0.0);
    assert!(r45.x.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)));
}

#[test]
fn rotate_non_square_about_the_centre() {
    // A single bright pixel right of centre in a 3×4 plane (centre at row 1, col 1.5)
    // turns to straight above the centre: between columns 1 and 2, half in each.
    let mut s = images(1, (1, 3, 4));
    s.x.iter_mut().for_each(|v| *v = 0.0);
    s.x[4 + 3] = 1.0; // (1, 3): 1.5 right of the centre
    let r = apply(&[Transform::Rotate { degrees: 90.0 }], &s);
    // It lands 1.5 rows above the centre, at (-0.5, 1.5): only its lower half is inside,
    // shared by columns 1 and 2 of row 0.
    let mut want = vec![0.0f32; 12];
    want[1] = 0.25;
    want[2] = 0.25;
    assert_eq!(r.x, want);
}

#[test]
fn noise_is_seeded_per_sample_and_clamped() {
    let s = images(6, (1, 4, 4));
    let noise = |seed| Transform::Noise { std: 0.3, seed };
    let a = apply(&[noise(1)], &s);
    assert_eq!(a.x, apply(&[noise(1)], &s).x);
    assert_ne!(a.x, apply(&[noise(2)], &s).x);
    assert_ne!(a.x, s.x);
    assert!(a.x.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(a.x.contains(&0.0) && a.x.contains(&1.0));
    // A sample's noise follows its index in the source split, not its row position.
    let mut tail = s.select(&[3, 4, 5]);
    apply_transforms(&[noise(1)], &mut tail, vec![3, 4, 5], "train").unwrap();
    assert_eq!(tail.x, a.x[3 * 16..]);
    // The test split draws different noise.
    let mut t = s.clone();
    apply_transforms(&[noise(1)], &mut t, (0..6).collect(), "test").unwrap();
    assert_ne!(t.x, a.x);
    let zero = apply(&[Transform::Noise { std: 0.0, seed: 1 }], &s);
    assert_eq!(zero.x, s.x);
}

#[test]
fn subsample_keeps_about_the_fraction_deterministically_and_every_class() {
    let s = images(3000, (1, 2, 2));
    let sub = |fraction, seed| Transform::Subsample { fraction, seed };
    let a = apply(&[sub(0.3, 5)], &s);
    assert!((800..1000).contains(&a.len()), "{}", a.len());
    assert_eq!(a.x, apply(&[sub(0.3, 5)], &s).x);
    assert_ne!(a.y.len(), 0);
    assert_ne!(a.x, apply(&[sub(0.3, 6)], &s).x);
    assert_eq!(apply(&[sub(1.0, 5)], &s).x, s.x);
    // Kept rows are unchanged rows of the input, in order.
    let first = a.row(0).to_vec();
    assert!((0..s.len()).any(|i| s.row(i) == &first[..]));
    // A tiny fraction still keeps one sample of each class.
    let tiny = apply(&[sub(1e-9, 5)], &s);
    assert_eq!(tiny.len(), 3);
    let mut classes = tiny.y.clone();
    classes.sort_unstable();
    assert_eq!(classes, vec![0, 1, 2]);
    // Composes: keeps ≈ the product of the fractions.
    let two = apply(&[sub(0.5, 1), sub(0.5, 2)], &s);
    assert!((600..900).contains(&two.len()), "{}", two.len());
}

#[test]
fn load_applies_transforms_in_order_to_both_splits() {
    let dir = tempfile::tempdir().unwrap();
    let n = 40;
    let imgs: Vec<u8> = (0..n * 9).map(|v| (v * 7) as u8).collect();
    let labs: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
    let p = |f: &str| dir.path().join(f);
    for (i, l) in [("tri", "trl"), ("tei", "tel")] {
        write_idx(&p(i), &[n, 3, 3], &imgs).unwrap();
        write_idx(&p(l), &[n], &labs).unwrap();
    }
    let src = DataSource::Idx {
        train_images: p("tri"),
        train_labels: p("trl"),
        test_images: p("tei"),
        test_labels: p("tel"),
    };
    let plain = spec(src.clone(), &[0, 1], &[2, 3]);
    let base = load(&plain).unwrap();
    assert_eq!(base.train.shape, (1, 3, 3));
    let mut inv = plain.clone();
    inv.transforms = vec![Transform::Invert];
    let inverted = load(&inv).unwrap();
    for (d, b) in [(&inverted.train, &base.train), (&inverted.eval, &base.eval)] {
        assert_eq!(d.y, b.y);
        assert!(d
            .x
            .iter()
            .zip(&b.x)
            .all(|(a, b)| (a + b - 1.0).abs() < 1e-6));
    }
    // Order matters: clamping noise then inverting differs from inverting then noise
    // only where clamping bit; both stay deterministic.
    let mut a = plain.clone();
    a.transforms = vec![
        Transform::Subsample {
            fraction: 0.5,
            seed: 1,
        },
        Transform::Rotate { degrees: 30.0 },
        Transform::Noise { std: 0.2, seed: 1 },
    ];
    let a1 = load(&a).unwrap();
    assert_eq!(a1.train.x, load(&a).unwrap().train.x);
    assert!(a1.train.len() < base.train.len() && a1.eval.len() < base.eval.len());
    assert!(a1.train.x.iter().all(|v| (0.0..=1.0).contains(v)));
    // The limit applies before the transforms.
    let mut lim = a.clone();
    lim.train_limit = Some(10);
    assert!(load(&lim).unwrap().train.len() <= 10);

    // Rotation needs 2-D images: a 1-D IDX file is refused at load time.
    write_idx(&p("flat"), &[n, 9], &imgs).unwrap();
    let mut flat = spec(
        DataSource::Idx {
            train_images: p("flat"),
            train_labels: p("trl"),
            test_images: p("flat"),
            test_labels: p("tel"),
        },
        &[0],
        &[1],
    );
    flat.transforms = vec![Transform::Invert, Transform::Rotate { degrees: 10.0 }];
    let e = load(&flat).unwrap_err().to_string();
    assert!(
        e.contains("transform 2 (`rotate`)") && e.contains("2-D"),
        "{e}"
    );
}

#[test]
fn transform_parameters_and_sources_are_checked() {
    let syn = synth(4, 8, 0);
    let img = DataSource::Cifar10 { path: "x".into() };
    assert!(Transform::Invert.check(&syn).is_ok());
    assert!(Transform::Subsample {
        fraction: 0.5,
        seed: 0
    }
    .check(&syn)
    .is_ok());
    for (t, src, needle) in [
        (Transform::Rotate { degrees: 5.0 }, &syn, "2-D"),
        (Transform::Noise { std: 0.1, seed: 0 }, &syn, "synthetic"),
        (Transform::Noise { std: -1.0, seed: 0 }, &img, "≥ 0"),
        (Transform::Rotate { degrees: f64::NAN }, &img, "finite"),
        (
            Transform::Subsample {
                fraction: 0.0,
                seed: 0,
            },
            &img,
            "(0, 1]",
        ),
        (
            Transform::Subsample {
                fraction: 1.5,
                seed: 0,
            },
            &img,
            "(0, 1]",
        ),
    ] {
        let e = t.check(src).unwrap_err();
        assert!(e.contains(needle), "{t:?}: {e}");
    }
    let mut s = spec(syn, &[0], &[1]);
    s.transforms = vec![Transform::Noise { std: 0.1, seed: 0 }];
    let e = load(&s).unwrap_err().to_string();
    assert!(e.contains("transform 1 (`noise`)"), "{e}");
}
