use super::*;

/// The accelerator path, run on the CPU, gives the CPU path's result.
#[test]
fn both_paths_compute_the_weighted_sum() {
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    let weights = [0.2, 0.5, 0.3];
    for (kind, ulp) in [
        (Kind::Float, 1.2e-7),
        (Kind::BFloat16, 8e-3),
        (Kind::Half, 1e-3),
    ] {
        let tensors: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn([40_000], (Kind::Float, Device::Cpu)).to_kind(kind))
            .collect();
        let inputs: Vec<Input> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let path = dir.path().join(format!("{i}.safetensors"));
                Tensor::write_safetensors(&[("w", t)], &path).unwrap();
                Input::open(&path).unwrap()
            })
            .collect();
        let dtype = inputs[0].tensors["w"].dtype;
        let cpu = average_cpu(&inputs, "w", &weights).unwrap();
        let torch = to_bytes(&tch::no_grad(|| {
            average_tensors(&tensors, &weights, kind_of(dtype).unwrap())
        }));
        // libtorch may fuse the multiply-add (one rounding instead of two), which can flip
        // the output's last bit on a rare tie, or leave a residue of 1e-17 where the sum
        // cancels to zero.
        let as_tensor = |b: &[u8]| Tensor::from_data_size(b, &[40_000], kind).to_kind(Kind::Double);
        let (a, b) = (as_tensor(&cpu), as_tensor(&torch));
        let expected = tensors
            .iter()
            .zip(weights)
            .map(|(t, w)| t.to_kind(Kind::Double) * w)
            .reduce(|x, y| x + y)
            .unwrap();
        assert!(
            a.allclose(&b, ulp, 1e-15, false),
            "{kind:?}: paths differ by more than an ulp"
        );
        assert!(
            a.allclose(&expected, ulp, 1e-7, false),
            "{kind:?}: not the weighted sum"
        );
    }
}

#[test]
fn a_truncated_or_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    Tensor::write_safetensors(
        &[("w", Tensor::ones([100], (Kind::Float, Device::Cpu)))],
        &path,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    assert!(
        Input::open(&path)
            .err()
            .unwrap()
            .to_string()
            .contains("offsets")
    );
    std::fs::write(&path, b"PK\x03\x04 a zip file").unwrap();
    assert!(Input::open(&path).is_err());
}
