"""The LD text-to-image model: prompts, text encoder, fine-tuning schemes and their artifacts."""

import pytest
import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from ldmonai.errors import LdmonaiError
from ldmonai.ld.finetune import SCHEMES, dreambooth_loss, load_custom_diffusion, prepare_scheme, save_custom_diffusion
from ldmonai.ld.model import LatentDiffusion
from ldmonai.ld.prompts import PromptBuilder, age_in_words, render_age, render_age_difference
from ldmonai.ld.text_encoder import TinyTextEncoder, load_learned_tokens, save_learned_tokens


def tiny_model(seed: int = 0) -> LatentDiffusion:
    torch.manual_seed(seed)
    vocab = PromptBuilder(fields=("age", "sex", "diagnosis"), templates="diverse").vocabulary()
    ae = AutoencoderKL(2, 1, 1, channels=(8, 16), latent_channels=4, num_res_blocks=1,
                       attention_levels=(False, False), norm_num_groups=8)
    unet = DiffusionModelUNet(2, 4, 4, channels=(16, 32), attention_levels=(False, True), num_res_blocks=1,
                              num_head_channels=8, with_conditioning=True, cross_attention_dim=32, norm_num_groups=8)
    return LatentDiffusion(ae, unet, TinyTextEncoder(vocab, dim=32, num_layers=1, max_length=24))


def test_prompts():
    b = PromptBuilder(fields=("age", "sex", "diagnosis"), age_style="word")
    assert b({"age": 77, "sex": "F", "diagnosis": "MCI"}) == \
        "a brain mri of a seventy-seven year old female brain with mild cognitive impairment"
    assert render_age(77, "numerical") == "77 year old" and age_in_words(102) == "one hundred and two"
    with pytest.raises(LdmonaiError, match="binned age describes the age difference between two scans"):
        render_age(77, "binned")
    diverse = PromptBuilder(templates="diverse", seed=1)
    assert len({diverse() for _ in range(200)}) == 20
    with pytest.raises(LdmonaiError, match=r"unknown prompt field\(s\) \['weight'\]"):
        PromptBuilder(fields=("age", "weight"))
    with pytest.raises(LdmonaiError, match="no 'diagnosis'.*add a diagnosis column"):
        PromptBuilder(fields=("diagnosis",))({"age": 70, "image": "x.png"})
    # every word a prompt or an instruction uses is in the encoder's vocabulary: no <unk>
    enc = TinyTextEncoder(b.vocabulary(), dim=16, num_layers=1)
    texts = [b({"age": a, "sex": "M", "diagnosis": "AD"}) for a in (55, 77, 101)]
    for style in ("binned", "word", "numerical"):
        i = PromptBuilder(fields=("age", "sex", "diagnosis"), age_style=style)
        texts += [i.instruction({"age": 70, "sex": "F", "diagnosis": "CN"}, {"age": t, "sex": "F", "diagnosis": d})
                  for t, d in ((71, "CN"), (77.5, "MCI"), (93, "AD"), (64, "CN"))]
    assert 3 not in enc.tokenizer(texts)


# (source age, target age) -> the difference as the paper bins it (slight < 5 years, moderate 5 to 10,
# significant > 10), spelled out, and in digits
AGE_DIFFERENCES = [
    ((70, 70), ("the same age", "the same age", "the same age")),
    ((70, 71), ("slightly older", "one year older", "1 year older")),
    ((70, 74.9), ("slightly older", "five years older", "5 years older")),  # binned before rounding
    ((70, 75), ("moderately older", "five years older", "5 years older")),
    ((62.5, 72.5), ("moderately older", "ten years older", "10 years older")),
    ((70, 80.2), ("significantly older", "ten years older", "10 years older")),
    ((60, 83), ("significantly older", "twenty-three years older", "23 years older")),
    ((78, 71), ("moderately younger", "seven years younger", "7 years younger")),
    ((78, 76), ("slightly younger", "two years younger", "2 years younger")),
    ((70, 70.3), ("slightly older", "the same age", "the same age")),
]


@pytest.mark.parametrize("ages, expected", AGE_DIFFERENCES)
def test_age_difference_bins_and_forms(ages, expected):
    assert tuple(render_age_difference(*ages, style) for style in ("binned", "word", "numerical")) == expected


def test_instructions_carry_the_age_difference():
    src, dst = {"age": 70, "sex": "F", "diagnosis": "CN"}, {"age": 77, "sex": "F", "diagnosis": "MCI"}
    assert PromptBuilder(fields=("age",), age_style="binned").instruction(src, dst) == "make this brain moderately older"
    assert PromptBuilder(fields=("age", "sex", "diagnosis"), age_style="word").instruction(src, dst) == \
        "make this female brain with cognitively normal seven years older, as a female brain with mild cognitive impairment"
    assert PromptBuilder(fields=("diagnosis",)).instruction(src, {**src, "age": 90}) == "make this brain with cognitively normal"
    with pytest.raises(LdmonaiError, match="no 'age'"):
        PromptBuilder(fields=("age",)).instruction(src, {"sex": "F"})


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(model, params, prompts, steps=2, scheme="full"):
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)  # weight decay would move any open parameter
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    latents = model.encode(images)
    for _ in range(steps):
        if scheme == "dreambooth":
            loss = dreambooth_loss(model, latents[:1], prompts[:1], latents[1:], prompts[1:], delta=0.1)
        else:
            loss = model.denoising_loss(latents, prompts, delta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_trains_only_its_parameters(scheme):
    pytest.importorskip("peft") if scheme == "lora" else None
    model = tiny_model()
    params = prepare_scheme(model, scheme, initializer="brain")
    before = _state(model)
    _train(model, params, ["a brain mri of a <sks> brain", "a brain mri of a brain"], scheme=scheme)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable, sorted(changed - trainable)
    if scheme in ("full", "dreambooth"):
        assert all(n.startswith("unet.") for n in changed) and len(changed) > 20
    elif scheme == "textual_inversion":
        assert changed == {"text_encoder.learned_embedding"}
    elif scheme == "custom_diffusion":
        assert "text_encoder.learned_embedding" in changed
        assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed - {"text_encoder.learned_embedding"})
    else:
        assert all("lora_" in n for n in changed)
    assert not any(n.startswith("autoencoder.") for n in changed)


def test_textual_inversion_and_custom_diffusion_artifacts_round_trip(tmp_path):
    prompt = ["a brain mri of a <sks> brain"]
    trained = tiny_model()
    params = prepare_scheme(trained, "custom_diffusion", initializer="brain")
    _train(trained, params, prompt * 2)
    ti, cd = save_learned_tokens(trained.text_encoder, tmp_path / "ti.pt"), save_custom_diffusion(trained, tmp_path / "cd.pt")
    assert cd.stat().st_size < 200_000  # small: K/V projections and one token, not the model
    with torch.no_grad():
        want_context = trained.text_encoder(prompt)
        want = trained.unet(torch.zeros(1, 4, 8, 8), timesteps=torch.tensor([10]), context=want_context)

    fresh = tiny_model()
    assert load_learned_tokens(fresh.text_encoder, ti) == ["<sks>"]
    torch.testing.assert_close(fresh.text_encoder(prompt), want_context)
    fresh = tiny_model()
    load_custom_diffusion(fresh, cd)
    with torch.no_grad():
        got = fresh.unet(torch.zeros(1, 4, 8, 8), timesteps=torch.tensor([10]), context=fresh.text_encoder(prompt))
    torch.testing.assert_close(got, want)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LdmonaiError, match="bad.pt: cannot read Custom Diffusion file"):
        load_custom_diffusion(tiny_model(), tmp_path / "bad.pt")


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sampling_is_seeded_and_drift_translates_the_latents(guidance):
    """DDIM from the same noise is deterministic, so a model sampled with δ at inference only
    must give exactly its δ = 0 latents plus δ (docs/ld.md): the prior, every step and the
    guidance branches all go through the drift wrapper."""
    model = tiny_model().eval()
    model.decode = lambda z: z  # compare the final latents themselves

    def run(delta):
        return model.sample(["a brain mri of a brain"] * 2, (8, 8), delta=delta, num_inference_steps=5,
                            guidance_scale=guidance, generator=torch.Generator().manual_seed(3))

    a = run(0.0)
    assert a.shape == (2, 4, 8, 8) and torch.equal(a, run(0.0))
    for delta in (0.1, -0.05, [0.1, 0.0, -0.1, 0.05]):
        shift = torch.as_tensor(delta).reshape(1, -1, 1, 1)
        torch.testing.assert_close(run(delta), a + shift, atol=1e-5, rtol=0)


def test_the_training_delta_travels_with_the_weights(tmp_path, capsys):
    from ldmonai.ld.pipeline import load_model, training_delta

    model = tiny_model()
    assert model.trained_delta() == 0.0
    assert training_delta(model, 0.05) == 0.05 and training_delta(model, 0.2, use_latent_drift=False) == 0.0
    assert training_delta(model, [0.1, 0.0, -0.1, 0.05]) == [0.1, 0.0, -0.1, 0.05]
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert load_model(tiny_model(), tmp_path / "m.pt").trained_delta() == [0.1, 0.0, -0.1, 0.05]
    old = {k: v for k, v in model.state_dict().items() if k != "latent_drift"}  # weights from before it was recorded
    torch.save(old, tmp_path / "old.pt")
    assert load_model(tiny_model(), tmp_path / "old.pt").trained_delta() == 0.0
    assert "record no latent drift; they load with δ = 0" in capsys.readouterr().err
    with pytest.raises(LdmonaiError, match="2 values but the latent has.*4 channels"):
        model.record_delta([0.1, 0.2])
    with pytest.raises(LdmonaiError, match="out of range"):
        training_delta(model, 3.0)
    with pytest.raises(LdmonaiError, match="neither a number nor 'search'"):
        training_delta(model, "serach")


def test_bad_images_are_one_clear_error():
    model = tiny_model()
    with pytest.raises(LdmonaiError, match=r"do not fit the autoencoder, which takes \(B, 1, H, W\)"):
        model.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(LdmonaiError, match="not a multiple of 2"):
        model.encode(torch.rand(2, 1, 15, 16))
    with pytest.raises(LdmonaiError, match="unknown fine-tuning scheme"):
        prepare_scheme(model, "hypernetwork")
