"""The models of the zoo sweep (`zoo_sweep.py`): how to list, build and size each one.

torchvision: every classification model,
`torchvision.models.list_models(module=torchvision.models)`, built with
`get_model(name, weights=None)`. timm: `TIMM_MODELS`, built with
`timm.create_model(name, pretrained=False)`. All with random weights (nothing is downloaded).

`TIMM_MODELS` was chosen once, by script, from all 1,371 timm models (timm 1.0.31), with
parameter counts taken on the meta device: per timm module (one module is one family file),
the smallest models up to a quota (1 for modules of at most 3 models, 2 up to 10, 3 up to 30, 5
up to 60, 8 above), preferring one model per name prefix first; models of more than 60M
parameters, timm's `test_*` models and encoder-only/merge variants left out; near-duplicates
(resolution or `_ns`/`_jx` variants) then dropped by hand, and the models the issue names added
(`tf_efficientnet_b0`, `efficientnet_b0_gn`, NF nets, MaxViT, `vgg11_bn`, a BEiT, the NAS nets).
The list is ordered so that its first part covers every family once: a partial sweep
(`--limit`) stays spread across families.
"""

from __future__ import annotations

from torch import nn

TIMM_MODELS: tuple[str, ...] = (
    "tf_efficientnet_b0", "efficientnet_b0", "efficientnet_b0_gn", "nf_resnet50", "nfnet_l0",
    "maxvit_rmlp_nano_rw_256", "resnet50", "halonet_h1", "mobileone_s1", "cait_xxs24_224",
    "coat_tiny", "convit_tiny", "convmixer_768_32", "convnext_atto", "cpubone_nano",
    "crossvit_tiny_240", "csatv2", "cs3darknet_focus_s", "cspnext_tiny", "davit_tiny",
    "deit_tiny_patch16_224", "densenet121", "dla46x_c", "dpn48b", "edgenext_xx_small",
    "efficientformer_l1", "efficientformerv2_s0", "mixnet_s", "efficientvim_m1",
    "efficientvit_b0", "efficientvit_m0", "vit_tiny_patch16_dinov3_qkvb", "fasternet_t0",
    "fastvit_t8", "focalnet_tiny_srf", "gcvit_xxtiny", "ghostnet_050", "hardcorenas_b",
    "hgnetv2_b0", "hiera_tiny_224", "hieradet_small", "hrnet_w18_small", "iformer_t",
    "inception_next_atto", "inception_resnet_v2", "inception_v3", "inception_v4", "lcnetv2_small",
    "levit_128s", "lowformer_b0", "mambaout_femto", "maxvit_nano_rw_256", "poolformerv2_s12",
    "gmlp_ti16_224", "mobilenetv3_small_100", "mobilevit_xxs", "mvitv2_tiny", "nest_tiny",
    "nextvit_small", "eca_nfnet_l0", "pit_ti_224", "pvt_v2_b0", "rdnet_tiny", "regnety_002",
    "repghostnet_050", "repvit_m1", "res2next50", "resnest14d", "resnet18", "resnetv2_18",
    "rexnet_100", "selecsls42", "legacy_seresnet18", "sequencer2d_s", "shvit_s1", "skresnet18",
    "starnet_s050", "swiftformer_xs", "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256",
    "swinv2_cr_tiny_224", "tiny_vit_5m_224", "tnt_s_legacy_patch16_224", "tresnet_m",
    "twins_svt_small", "visformer_tiny", "vit_tiny_patch16_224", "vit_tiny_r_s16_p8_224",
    "vit_srelpos_small_patch16_224", "vitamin_small_224", "volo_d1_224", "ese_vovnet19b_slim_dw",
    "legacy_xception", "xception41p", "xcit_nano_12_p8_224", "vgg11_bn", "beit_base_patch16_224",
    "nasnetalarge", "pnasnet5large", "eca_botnext26ts_256", "gernet_s", "coat_lite_tiny",
    "convnextv2_atto", "cpubone_t0", "crossvit_9_240", "darknet17", "cspnext_s",
    "deit3_small_patch16_224", "densenetblur121d", "dla46_c", "dpn68", "edgenext_x_small",
    "efficientformerv2_s1", "tf_mixnet_s", "efficientvit_b1", "efficientvit_m1",
    "eva02_tiny_patch14_224", "fasternet_t1", "fastvit_t12", "focalnet_tiny_lrf", "gcvit_xtiny",
    "ghostnetv3_050", "hardcorenas_a", "hgnet_tiny", "hiera_small_abswin_256",
    "hrnet_w18_small_v2", "iformer_s", "inception_next_tiny", "levit_conv_128s", "lowformer_b1",
    "mambaout_kobe", "poolformer_s12", "gmixer_12_224", "tf_mobilenetv3_small_100",
    "mobilevitv2_050", "mvitv2_small", "pvt_v2_b1", "regnetx_002", "repvit_m0_9",
    "res2net50_14w_8s", "resnest26d", "resnetv2_18d", "rexnetr_100", "selecsls60",
    "legacy_seresnext26_32x4d", "shvit_s2", "skresnet34", "starnet_s100", "swiftformer_s",
    "swin_s3_tiny_224", "tiny_vit_11m_224", "twins_pcpvt_small", "flexivit_small",
    "vit_small_r26_s32_224", "vit_relpos_small_patch16_rpn_224", "vovnet39a", "xception41",
    "xcit_nano_12_p16_224", "lambda_resnet26t", "repvgg_a0", "convnext_zepto_rms", "cspresnext50",
    "deit_tiny_distilled_patch16_224", "dla60x_c", "vit_pe_core_tiny_patch16_384", "fastvit_s12",
    "levit_128", "mambaout_tiny", "coatnet_pico_rw_224", "caformer_s18", "resmlp_12_224",
    "lcnet_035", "regnetz_005", "resnet10t", "vit_xsmall_patch16_clip_224",
    "vit_small_resnet50d_s16_224", "vit_relpos_small_patch16_224", "xcit_tiny_12_p8_224",
    "regnetz_b16", "convnext_atto_rms", "vit_small_patch16_dinov3", "coatnext_nano_rw_224",
    "mobilenetv4_conv_small_035", "nf_regnet_b0", "regnetv_040", "resnet14t",
    "vit_wee_patch16_reg1_gap_256", "resnext26ts", "eva02_small_patch14_224",
    "maxxvit_rmlp_nano_rw_256", "fbnetv3_b", "nf_regnet_b1", "regnetx_004_tv", "resnetblur18",
    "vit_small_patch8_224", "mobilenetv2_035", "resnet18d", "mnasnet_small", "seresnet18",
    "tinynet_e", "ecaresnext26t_32x4d",
)

SOURCES = ("torchvision", "timm")


def torchvision_models() -> list[str]:
    """Every torchvision classification model, sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def models(source: str) -> list[str]:
    """The sweep's models from `source` ("torchvision" or "timm"), in sweep order."""
    return torchvision_models() if source == "torchvision" else list(TIMM_MODELS)


def build(source: str, name: str) -> nn.Module:
    """The model with random weights (train mode, as the library returns it)."""
    if source == "torchvision":
        import torchvision

        model: nn.Module = torchvision.models.get_model(name, weights=None)
        return model
    import timm

    built: nn.Module = timm.create_model(name, pretrained=False)
    return built


def input_shape(source: str, name: str, model: nn.Module) -> tuple[int, int, int]:
    """The input (without batch) the model is meant for: timm's `pretrained_cfg["input_size"]`;
    for torchvision the crop size of the model's default weights' transforms (e.g. 299 for
    inception_v3, 600 for efficientnet_b7), unless the model fixes its own `image_size` at
    construction (ViT: 224 without weights, while vit_h_14's default weights are for 518)."""
    if source == "timm":
        size = tuple(int(d) for d in getattr(model, "pretrained_cfg", {})["input_size"])
        return (size[0], size[1], size[2])
    import torchvision

    side = getattr(model, "image_size", None)
    if not isinstance(side, int):
        weights = torchvision.models.get_model_weights(name).DEFAULT
        crop = weights.transforms().crop_size
        side = int(crop[0] if isinstance(crop, list | tuple) else crop)
    return (3, side, side)
