"""Write the tiny random-weight Z-Image to a folder.

    python tools/make_tiny_model.py OUT            # diffusers layout in OUT
    python tools/make_tiny_model.py OUT --comfy    # + OUT/comfy/{diffusion_models,text_encoders,vae,loras}/

The weights are a pure function of the tensor names, so every run (on any machine) writes the same
files. The ComfyUI files use the official names (z_image_turbo_bf16.safetensors, qwen_3_4b.safetensors,
ae.safetensors) in the released key layouts, float32; --comfy also writes their quantized copies in
ComfyUI 0.33's layouts (z_image_turbo_int8_convrot.safetensors, z_image_int8_convrot.safetensors,
z_image_turbo_int8.safetensors, qwen_3_4b_fp8_mixed.safetensors, qwen_3_4b_int8_convrot.safetensors;
graphrun.nodes.zimage.tiny_quantized.write_quantized_files).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def make(out: Path, comfy: bool) -> list[Path]:
    """Build the tiny model into ``out``; return the written folders."""
    from graphrun.nodes.zimage import tiny

    components = tiny.build_components()
    written = [tiny.write_diffusers_folder(components, out)]
    if comfy:
        # Also writes the test LoRAs (tiny_loras.write_test_loras) and the quantized files
        # (tiny_quantized.write_quantized_files).
        written.append(tiny.write_comfy_models_dir(components, out / "comfy", loras=True))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (created if missing)")
    parser.add_argument("--comfy", action="store_true",
                        help="also write ComfyUI single files and test LoRAs under OUT/comfy/")
    args = parser.parse_args(argv)
    for path in make(args.out, args.comfy):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
