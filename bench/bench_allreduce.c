// bench_allreduce.c: all-reduce through comm/ next to raw MPI_Allreduce of
// the same bytes, in the same run.
//
//   mpirun -np 2 build/bench/bench_allreduce [--max-mib 256]
//
// For each size from 1 KiB to 256 MiB (float32, in place, sum), the two are
// timed alternately, rep for rep, and the medians printed with the overhead of
// ent_allreduce (blocking: the path the trainer's TP and norm reductions use)
// and of ent_iallreduce + ent_wait (non-blocking: the DP gradient buckets).
// It prints figures; it never passes or fails.
#include "ent_comm.h"

#include "bench_util.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


int main(int argc, char **argv) {
    ent_comm_t *comm = NULL;
    if (ent_comm_init(&argc, &argv, &comm) != ENT_OK) {
        fprintf(stderr, "bench_allreduce: %s\n", ent_last_error());
        return 1;
    }
    int max_mib = 256;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max-mib") == 0 && i + 1 < argc) max_mib = atoi(argv[++i]);
        else {
            fprintf(stderr, "Usage: mpirun -np N bench_allreduce [--max-mib M]\n");
            return 2;
        }
    }
    ent_grid *grid = NULL;
    if (ent_grid_new(comm, 1, &grid) != ENT_OK) {
        fprintf(stderr, "bench_allreduce: %s\n", ent_last_error());
        return 1;
    }
    int rank = ent_comm_rank(comm), size = ent_comm_size(comm);
    size_t max_bytes = (size_t)max_mib << 20;
    float *buf = malloc(max_bytes);
    for (size_t i = 0; i < max_bytes / sizeof(float); i++) buf[i] = (float)(i % 3);
    if (rank == 0) {
        printf("bench_allreduce: %d ranks on %d node(s), float32 sum in place, median of "
               "alternating reps\n\n", size, ent_comm_num_nodes(comm));
        printf("%10s %6s %14s %14s %14s %10s %10s\n", "bytes", "reps", "MPI (ms)",
               "ent (ms)", "ent-nb (ms)", "ent ovh", "nb ovh");
    }
    enum { MAXREPS = 200 };
    double t_mpi[MAXREPS], t_ent[MAXREPS], t_nb[MAXREPS];
    for (size_t bytes = 1024; bytes <= max_bytes; bytes *= 4) {
        size_t n = bytes / sizeof(float);
        // about 1 s of work per size, between 5 and MAXREPS reps
        int reps = (int)(((size_t)1 << 30) / (bytes * 3 + 65536));
        reps = reps < 5 ? 5 : reps > MAXREPS ? MAXREPS : reps;
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); // warm-up
        for (int r = 0; r < reps; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            t_mpi[r] = MPI_Wtime() - t0;
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            ent_allreduce(grid->world, buf, buf, n, ENT_F32, ENT_SUM);
            t_ent[r] = MPI_Wtime() - t0;
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            ent_request_t *req = NULL;
            ent_iallreduce(grid->world, buf, buf, n, ENT_F32, ENT_SUM, &req);
            ent_wait(&req);
            t_nb[r] = MPI_Wtime() - t0;
            // keep the values small: sums of sums would overflow over many reps
            if (r % 8 == 7)
                for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 3);
        }
        // the slowest rank's time per rep is the collective's time
        MPI_Allreduce(MPI_IN_PLACE, t_mpi, reps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, t_ent, reps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, t_nb, reps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0) {
            double a = bench_median(t_mpi, reps), b = bench_median(t_ent, reps), c = bench_median(t_nb, reps);
            printf("%10zu %6d %14.4f %14.4f %14.4f %9.1f%% %9.1f%%\n", bytes, reps, a * 1e3,
                   b * 1e3, c * 1e3, 100 * (b / a - 1), 100 * (c / a - 1));
            fflush(stdout);
        }
    }
    free(buf);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    return 0;
}
