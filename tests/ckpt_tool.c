// ckpt_tool.c: damages checkpoints on purpose, for the fault tests.
//
//   ckpt_tool flip FILE DATASET     flips one byte in the middle of the first
//                                   stored chunk of DATASET ("params/wte.weight")
//   ckpt_tool set-version FILE N    rewrites the format_version attribute
//
// Test code only: it uses HDF5 to find where a dataset's bytes are, then
// changes them with plain file I/O, as a failing disk or a bit flip would.
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int flip(const char *path, const char *name) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f < 0 ? -1 : H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) {
        fprintf(stderr, "ckpt_tool: cannot open %s in %s\n", name, path);
        return 1;
    }
    hid_t space = H5Dget_space(d);
    hsize_t nchunks = 0, offset[2];
    unsigned mask;
    haddr_t addr = 0;
    hsize_t size = 0;
    H5Dget_num_chunks(d, space, &nchunks);
    herr_t rc = nchunks > 0 ? H5Dget_chunk_info(d, space, 0, offset, &mask, &addr, &size) : -1;
    H5Sclose(space);
    H5Dclose(d);
    H5Fclose(f);
    if (rc < 0 || size == 0) {
        fprintf(stderr, "ckpt_tool: %s has no stored chunk\n", name);
        return 1;
    }
    int fd = open(path, O_RDWR);
    unsigned char b;
    off_t at = (off_t)(addr + size / 2);
    if (fd < 0 || pread(fd, &b, 1, at) != 1) return 1;
    b ^= 0x5a;
    if (pwrite(fd, &b, 1, at) != 1) return 1;
    close(fd);
    printf("flipped byte %lld of %s (chunk of %llu bytes at %llu)\n", (long long)at, name,
           (unsigned long long)size, (unsigned long long)addr);
    return 0;
}

static int set_version(const char *path, long long version) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return 1;
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, H5T_NATIVE_LLONG, &version) < 0;
    if (a >= 0) H5Aclose(a);
    H5Fclose(f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "flip") == 0) return flip(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "set-version") == 0) return set_version(argv[2], atoll(argv[3]));
    fprintf(stderr, "usage: ckpt_tool flip FILE DATASET | set-version FILE N\n");
    return 2;
}
