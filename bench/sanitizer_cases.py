"""Small CUDA calls of every op, forward and backward, for compute-sanitizer (memcheck, racecheck):
odd lengths, a padded batch with a fully masked row, a varlen batch with an empty sequence, a sequence whose
far tiles are skipped; GEGLU in each dtype and on an unaligned pointer, the contrastive loss in float32 and
bf16, both directions and one."""

import torch

import bembed_ext


def main() -> None:
    device, dtype = "cuda", torch.bfloat16
    for geglu_dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(97, 2 * 24, device=device, dtype=geglu_dtype, requires_grad=True)
        bembed_ext.geglu(x).sum().backward()
    flat = torch.randn(1 + 7 * 16, device=device, dtype=dtype)
    x = flat[1:].view(7, 16).requires_grad_()  # 2 bytes off 16-byte alignment: the scalar path
    bembed_ext.geglu(x).sum().backward()

    for head_dim in (32, 64, 128):
        q, k, v = (torch.randn(2, 97, 3, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        mask = torch.ones(2, 97, dtype=torch.bool, device=device)
        mask[1, :] = False  # a sequence of only padding
        mask[0, 50:] = False
        slopes = bembed_ext.alibi_slopes(3).to(device)
        bembed_ext.alibi_attention(q, k, v, slopes, key_padding_mask=mask).float().sum().backward()

        lengths = [5, 0, 97, 1]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        total = sum(lengths)
        q, k, v = (torch.randn(total, 3, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        bembed_ext.alibi_attention_varlen(q, k, v, cu, max(lengths), slopes).float().sum().backward()

    # Steep slopes over five key tiles: CTAs walk only the tiles their rows reach (alibi_attention_skip.cuh), so
    # the pipeline starts past tile 0 and the dK/dV pass skips query tiles.
    steep = torch.tensor([1.0, 0.5], device=device)
    for head_dim in (64, 128):  # the two register layouts the skip code is compiled into most often
        q, k, v = (torch.randn(1, 320, 2, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        bembed_ext.alibi_attention(q, k, v, steep).float().sum().backward()

    for loss_dtype, bidirectional in ((torch.float32, True), (dtype, True), (dtype, False)):
        queries = torch.nn.functional.normalize(torch.randn(7, 50, device=device), dim=-1).to(loss_dtype)
        documents = torch.nn.functional.normalize(torch.randn(21, 50, device=device), dim=-1).to(loss_dtype)
        loss = bembed_ext.contrastive_loss(queries.requires_grad_(), documents.requires_grad_(),
                                           bidirectional=bidirectional)
        loss.backward()
    torch.cuda.synchronize()
    print("sanitizer cases ran")


if __name__ == "__main__":
    main()
