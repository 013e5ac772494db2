/*
 * Make one process see an AVX2-only x86 CPU (no AVX-512, no VNNI, no bf16, no AMX), for benchmarks.
 *
 * ONNX Runtime's MLAS picks its kernels from the CPUID instruction alone (platform.cpp) and has no
 * environment variable or session option that caps its ISA. Linux can make CPUID fault in user space
 * (arch_prctl ARCH_SET_CPUID 0, needs the cpuid_fault CPU flag): this library, loaded with LD_PRELOAD,
 * turns that on in its constructor, before any library of the process reads CPUID, catches the SIGSEGV
 * each CPUID then raises, runs the real CPUID with faulting briefly off, clears the feature bits below
 * and resumes after the instruction. Every library that asks CPUID (MLAS, oneDNN, torch's cpuinfo,
 * numpy) then dispatches to its AVX2 kernels. glibc's own dispatch ran before the constructor and keeps
 * its string functions. Build and use: benchmarks/avx2.py.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

static int keep_avx512_vnni = 0;

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (keep_avx512_vnni && leaf == 7 && sub == 0) {
        r[1] &= ~((1u << 21) | (1u << 26) | (1u << 27)); /* ifma, pf, er */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 12) | (1u << 14)); /* vbmi, vbmi2, bitalg, vpopcntdq */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (keep_avx512_vnni && leaf == 0xd && sub == 0) {
        r[0] &= ~((1u << 17) | (1u << 18));
    } else if (leaf == 7 && sub == 0) {
        /* EBX: avx512 f, dq, ifma, pf, er, cd, bw, vl */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) |
                  (1u << 31));
        /* ECX: avx512 vbmi, vbmi2, vnni, bitalg, vpopcntdq */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: avx512 4vnniw, 4fmaps, vp2intersect, amx_bf16, avx512_fp16, amx_tile, amx_int8 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: avx_vnni, avx512_bf16, amx_fp16; EDX: avx_vnni_int8, avx_ne_convert, amx_complex */
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21));
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 8));
    } else if (leaf == 0xd && sub == 0) {
        /* XSAVE components the CPU supports: no opmask/ZMM (5-7) or AMX tile (17-18) state */
        r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
    } else if (leaf == 0x1d || leaf == 0x1e) {
        r[0] = r[1] = r[2] = r[3] = 0; /* AMX tile and TMUL information */
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = (ucontext_t *)context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    uint32_t r[4];
    (void)info;
    if (ip[0] != 0x0f || ip[1] != 0xa2) { /* a real fault: die as the process would have */
        signal(sig, SIG_DFL);
        return;
    }
    real_cpuid((uint32_t)g[REG_RAX], (uint32_t)g[REG_RCX], r);
    mask((uint32_t)g[REG_RAX], (uint32_t)g[REG_RCX], r);
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
}

__attribute__((constructor)) static void avx2_only(void) {
    const char *mode = getenv("VAFUSION_CPUID");
    struct sigaction sa;
    keep_avx512_vnni = mode != NULL && strcmp(mode, "avx512_vnni") == 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "avx2_cpuid: this CPU or kernel cannot make CPUID fault (no cpuid_fault flag)\n");
        exit(3);
    }
}
