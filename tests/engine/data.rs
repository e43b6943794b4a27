use std::io::Write;

use mixpool::engine::data::{
    self, DataError, Format, Sequences, parse_documents, permutation, read_documents,
};
use mixpool::engine::tokenizer::{BYTE_EOS, Tokenizer};

use crate::helpers::{corpus, doc};

#[test]
fn jsonl_reads_text_and_optional_domain_and_ignores_other_fields() {
    let input = b"{\"text\": \"hello\", \"domain\": \"a\", \"id\": 7}\n\n{\"text\": \"world\"}\n";
    let docs = parse_documents(input, None).unwrap();
    assert_eq!(docs, vec![doc("hello", Some("a")), doc("world", None)]);
}

#[test]
fn plain_text_is_one_document() {
    let docs = parse_documents(b"first line\n\nsecond paragraph\n", None).unwrap();
    assert_eq!(docs, vec![doc("first line\n\nsecond paragraph\n", None)]);
}

#[test]
fn invalid_utf8_names_its_line() {
    let err = parse_documents(b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n", None).unwrap_err();
    assert!(matches!(err, DataError::NotUtf8 { line: 2 }), "{err}");
}

#[test]
fn a_line_that_is_not_json_names_its_line() {
    let err = parse_documents(
        b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{not json}\n",
        Some(Format::Jsonl),
    )
    .unwrap_err();
    assert!(matches!(err, DataError::NotJson { line: 3, .. }), "{err}");
    assert!(err.to_string().starts_with("line 3: not a JSON object"));
}

#[test]
fn a_line_without_a_text_string_names_its_line() {
    for bad in [
        &b"{\"body\": \"x\"}"[..],
        b"{\"text\": 5}",
        b"[1, 2]",
        b"\"text\"",
    ] {
        let mut input = b"{\"text\": \"ok\"}\n".to_vec();
        input.extend_from_slice(bad);
        let err = parse_documents(&input, Some(Format::Jsonl)).unwrap_err();
        let line = match err {
            DataError::NoText { line } | DataError::NotJson { line, .. } => line,
            other => panic!("{other}"),
        };
        assert_eq!(line, 2, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn a_non_string_domain_is_an_error() {
    let err = parse_documents(b"{\"text\": \"x\", \"domain\": 3}", None).unwrap_err();
    assert!(matches!(err, DataError::BadDomain { line: 1 }), "{err}");
}

#[test]
fn empty_data_is_an_error() {
    for input in [&b""[..], b"\n\n  \n", b"{\"text\": \"\"}\n"] {
        let err = parse_documents(input, None).unwrap_err();
        assert!(matches!(err, DataError::Empty), "{err}");
    }
}

#[test]
fn gzip_and_zstd_files_read_like_the_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(corpus("tech_docs")).unwrap();
    let plain = read_documents(&corpus("tech_docs")).unwrap();

    let gz = dir.path().join("tech_docs.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(read_documents(&gz).unwrap(), plain);

    let zst = dir.path().join("tech_docs.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(raw.as_slice(), 1).unwrap()).unwrap();
    assert_eq!(read_documents(&zst).unwrap(), plain);
}

#[test]
fn corrupt_compressed_data_is_an_error() {
    let err = data::decompress(vec![0x1f, 0x8b, 0x08, 0, 1, 2, 3]).unwrap_err();
    assert!(
        matches!(err, DataError::Decompress { codec: "gzip", .. }),
        "{err}"
    );
    let err = data::decompress(vec![0x28, 0xb5, 0x2f, 0xfd, 9, 9, 9]).unwrap_err();
    assert!(
        matches!(err, DataError::Decompress { codec: "zstd", .. }),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = read_documents(std::path::Path::new("/nonexistent/x.jsonl")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.jsonl"));
}

#[test]
fn tokenize_puts_eos_after_every_document() {
    let docs = [doc("ab", None), doc("é", None)];
    let stream = data::tokenize(&docs, &Tokenizer::Bytes).unwrap();
    let eos = BYTE_EOS as u32;
    assert_eq!(stream, vec![97, 98, eos, 0xc3, 0xa9, eos]);
}

#[test]
fn hugging_face_tokenizer_json_is_used_as_is() {
    use tokenizers::models::wordlevel::WordLevel;
    let vocab = [("[UNK]", 0), ("</s>", 1), ("hello", 2), ("world", 3)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut hf = tokenizers::Tokenizer::new(model);
    hf.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    hf.save(&path, false).unwrap();

    let tokenizer = Tokenizer::from_file(&path, 1, 1).unwrap();
    assert_eq!(tokenizer.encode("hello world nope").unwrap(), vec![2, 3, 0]);
    assert_eq!(tokenizer.vocab_size(), 4);
    let stream = data::tokenize(&[doc("world", None), doc("hello", None)], &tokenizer).unwrap();
    assert_eq!(stream, vec![3, 1, 2, 1]);

    std::fs::write(&path, "{ not a tokenizer").unwrap();
    let err = Tokenizer::from_file(&path, 1, 1).err().unwrap();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn weighted_sequences_hold_each_streams_share_in_every_prefix() {
    // Three streams told apart by their tokens: 0.., 1000.., 2000..
    let a: Vec<u32> = (0..201).collect();
    let b: Vec<u32> = (1000..1051).collect();
    let c: Vec<u32> = (2000..2101).collect();
    let weights = [0.5, 0.3, 0.2];
    let streams = [(&a[..], 1.0), (&b[..], 0.6), (&c[..], 0.4)];
    let mut s = Sequences::weighted(&streams, 10, 7).unwrap();
    let mut counts = [0usize; 3];
    for i in 0..500u64 {
        let window = s.get(i);
        let k = (window[0] / 1000) as usize;
        assert_eq!(k, s.stream_of(i));
        assert!(
            window.iter().all(|t| t / 1000 == k as u32),
            "one stream per window"
        );
        counts[k] += 1;
        for (n, w) in counts.iter().zip(weights) {
            let share = w * (i + 1) as f64;
            assert!(
                (*n as f64 - share).abs() <= 1.0,
                "{counts:?} after {}",
                i + 1
            );
        }
    }
    // Each stream's windows come in its own seeded order, every window once per epoch: the
    // second stream has 5 windows.
    let of_b: Vec<u64> = (0..500u64)
        .filter(|&i| s.stream_of(i) == 1)
        .take(5)
        .collect();
    let mut from_b: Vec<u32> = of_b.iter().map(|&i| s.get(i)[0]).collect();
    from_b.sort();
    assert_eq!(from_b, vec![1000, 1010, 1020, 1030, 1040]);
    // A fixed function of the inputs, asked in any order (a resumed run asks from the middle).
    let mut again = Sequences::weighted(&streams, 10, 7).unwrap();
    for i in (0..500u64).rev() {
        assert_eq!(again.get(i), s.get(i));
    }
    // A zero weight is never drawn from, whatever its size; weights must make sense.
    let tiny: Vec<u32> = vec![5000, 5001];
    let mut z = Sequences::weighted(&[(&a[..], 1.0), (&tiny[..], 0.0)], 10, 7).unwrap();
    assert!((0..100).all(|i| z.stream_of(i) == 0));
    assert!(Sequences::weighted(&[(&a[..], 0.0), (&b[..], 0.0)], 10, 7).is_err());
    assert!(Sequences::weighted(&[(&a[..], f64::NAN), (&b[..], 1.0)], 10, 7).is_err());
    let err = Sequences::weighted(&[(&a[..], 1.0), (&tiny[..], 1.0)], 10, 7)
        .err()
        .unwrap();
    assert!(err.contains("stream 1"), "{err}");
}

#[test]
fn sequences_visit_every_window_once_per_epoch_in_a_seeded_order() {
    let tokens: Vec<u32> = (0..101).collect();
    let mut s = Sequences::new(&tokens, 10, 7).unwrap();
    assert_eq!(s.chunks(), 10);
    let epoch0: Vec<u32> = (0..10).map(|i| s.get(i)[0]).collect();
    let epoch1: Vec<u32> = (10..20).map(|i| s.get(i)[0]).collect();
    for epoch in [&epoch0, &epoch1] {
        let mut starts = epoch.clone();
        starts.sort();
        assert_eq!(starts, (0..10).map(|i| i * 10).collect::<Vec<_>>());
    }
    assert_ne!(epoch0, epoch1, "each epoch has its own order");
    assert_eq!(
        s.get(3),
        &tokens[epoch0[3] as usize..epoch0[3] as usize + 11]
    );

    let mut again = Sequences::new(&tokens, 10, 7).unwrap();
    assert_eq!(
        (0..20).map(|i| again.get(i)[0]).collect::<Vec<_>>(),
        [epoch0, epoch1].concat()
    );
    let mut other_seed = Sequences::new(&tokens, 10, 8).unwrap();
    assert_ne!(
        (0..10).map(|i| other_seed.get(i)[0]).collect::<Vec<_>>(),
        (0..10).map(|i| s.get(i)[0]).collect::<Vec<_>>()
    );
}

#[test]
fn data_shorter_than_one_sequence_is_an_error() {
    let tokens: Vec<u32> = (0..10).collect();
    let err = Sequences::new(&tokens, 10, 0).err().unwrap();
    assert!(err.contains("10 tokens"), "{err}");
}

#[test]
fn permutation_is_a_fixed_function_of_the_seed() {
    assert_eq!(permutation(8, 42), permutation(8, 42));
    let mut p = permutation(1000, 1);
    p.sort();
    assert_eq!(p, (0..1000).collect::<Vec<u32>>());
}
