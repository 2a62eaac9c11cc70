# Sourced by pixi on every activation ([activation] scripts in pixi.toml); bash, never executed.
#
# Gives the environment's CUDA 13.0 the layout every CUDA consumer expects, without touching
# anything conda-forge installed.
#
# Why: conda-forge puts CUDA's headers and libraries only under
# $CONDA_PREFIX/targets/<triple>/{include,lib} (x86_64-linux on linux-64, sbsa-linux on
# linux-aarch64). torch's bundled FindCUDA and FindCUDAToolkit (vLLM's CMake configure),
# torch.utils.cpp_extension and FlashInfer's JIT look under $CUDA_HOME/include and
# $CUDA_HOME/lib64 instead, and fail (pytorch/pytorch#144690). $CONDA_PREFIX/include already
# holds other packages' headers, so it cannot simply become CUDA's include directory.
#
# What: a view directory, $CONDA_PREFIX/share/vllm-turbo/cuda (CUDA_HOME in pixi.toml), made of
# relative links into the prefix: bin, nvvm and targets as they are, include and lib64 pointing
# at targets/<triple>/. It is a standard toolkit layout. nvcc invoked as $CUDA_HOME/bin/nvcc
# sees TOP=$CUDA_HOME, and everything it reads under TOP exists there too.
#
# Idempotent and cheap: when every link is already right it only reads five links. A link is
# replaced atomically (rename), so concurrent activations cannot see a half-made view. It never
# fails the activation: a problem is left for `invoke doctor` to name.

__turbo_cuda_view() {
    local prefix="${CONDA_PREFIX:-}"
    [ -n "$prefix" ] && [ -d "$prefix/targets" ] || return 0
    local triple=""
    case "$(uname -m)" in
        x86_64) triple="x86_64-linux" ;;
        aarch64 | arm64) triple="sbsa-linux" ;;
    esac
    if [ -z "$triple" ] || [ ! -f "$prefix/targets/$triple/include/cuda_runtime.h" ]; then
        # Not this machine's triple: take the one target directory that holds the runtime
        # headers (a prefix made for another platform, as the tests build).
        local found="" d
        for d in "$prefix"/targets/*/include/cuda_runtime.h; do
            [ -f "$d" ] || continue
            [ -z "$found" ] || return 0 # more than one: ambiguous, leave it to doctor
            found="${d%/include/cuda_runtime.h}"
        done
        [ -n "$found" ] || return 0
        triple="${found##*/}"
    fi
    local view="$prefix/share/vllm-turbo/cuda"
    mkdir -p "$view" 2>/dev/null || return 0
    local name target
    for name in bin nvvm targets include lib64; do
        case "$name" in
            include) target="../../../targets/$triple/include" ;;
            lib64) target="../../../targets/$triple/lib" ;;
            *) target="../../../$name" ;;
        esac
        [ -e "$prefix/${target#../../../}" ] || continue
        [ "$(readlink "$view/$name" 2>/dev/null)" = "$target" ] && continue
        # Braced and `|| true`: a shell sourcing this under `set -e` must survive a failure.
        { ln -sfn "$target" "$view/.$name.$$" 2>/dev/null &&
            mv -Tf "$view/.$name.$$" "$view/$name" 2>/dev/null; } || rm -f "$view/.$name.$$" || true
    done
    return 0
}
__turbo_cuda_view
unset -f __turbo_cuda_view
