// bench_dp_scaling.c: data-parallel weak scaling inside one node.
//
//   mpirun -np 2 build/bench/bench_dp_scaling [--layers L --width C --context T --batch B]
//
// Phase 1: each rank in turn trains alone, one thread, while the others wait
// without spinning (cores of a shared machine need not run at one speed, so
// the baseline is the mean of every rank's solo rate). Phase 2: every rank trains, one thread each, data parallel with
// the same per-rank micro-batch, gradients all-reduced bucket by bucket during
// the backward pass. A third phase runs every rank alone at the same time,
// without communication: the most any data parallelism could reach on this
// machine, which separates the cores' shared resources (clock, caches, memory)
// from the cost of the gradient reduction. The phases alternate for three rounds (a shared machine
// drifts); the medians of per-step tokens/s of each phase are printed with
// their ratio (the weak-scaling efficiency per rank), and how long a step
// waited for the reduction after its backward pass. It prints figures; it
// never passes or fails.
#include "ent_runtime.h"

#include "bench_util.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUNDS 3
#define MAX_STEPS 256


// Waits for the other ranks without occupying a core (a polling sleep).
static void idle_barrier(void) {
    MPI_Request req;
    MPI_Ibarrier(MPI_COMM_WORLD, &req);
    int done = 0;
    struct timespec ts = {0, 1000000};
    while (!done) {
        MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (!done) nanosleep(&ts, NULL);
    }
}

// Trains `steps` timed steps after `warmup`; records each step's tokens/s,
// its forward + backward time and its wait for the reduction (ms).
static void train(const ent_model_shape *s, const ent_grid *grid, int B, int steps, int warmup,
                  int seed, double *rates, double *computes, double *waits) {
    ent_backend_t *be = ent_backend_cpu_new(1);
    ent_model_opts opts = {.tp = NULL, .arena_multiple = 16};
    ent_model_t *m = NULL;
    ent_optim_t *o = NULL;
    if (ent_model_new(be, s, &opts, B, s->context, &m) != ENT_OK ||
        ent_optim_new(m, grid, 0, &o) != ENT_OK) {
        fprintf(stderr, "bench_dp_scaling: %s\n", ent_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    ent_model_init(m, 1);
    int N = B * s->context;
    int32_t *tok = malloc(sizeof(int32_t) * N), *tgt = malloc(sizeof(int32_t) * N);
    srand((unsigned)seed);
    for (int i = 0; i < N; i++) {
        tok[i] = rand() % s->vocab;
        tgt[i] = rand() % s->vocab;
    }
    ent_adamw hp = {1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
    for (int step = 1; step <= warmup + steps; step++) {
        double t0 = MPI_Wtime();
        ent_model_zero_grad(m);
        float loss;
        ent_model_forward(m, tok, tgt, B, s->context, &loss);
        ent_optim_begin_backward(o, 1);
        ent_model_backward(m, 1.0f / (float)N);
        double t1 = MPI_Wtime();
        ent_optim_reduce_grads(o);
        double t2 = MPI_Wtime();
        double norm;
        ent_optim_grad_norm(o, &norm);
        ent_optim_step(o, &hp, 1.0f);
        double t3 = MPI_Wtime();
        if (step > warmup) {
            rates[step - warmup - 1] = N / (t3 - t0);
            computes[step - warmup - 1] = 1e3 * (t1 - t0);
            waits[step - warmup - 1] = 1e3 * (t2 - t1);
        }
    }
    free(tok);
    free(tgt);
    ent_optim_free(&o);
    ent_model_free(&m);
    ent_backend_free(&be);
}

int main(int argc, char **argv) {
    ent_comm_t *comm = NULL;
    if (ent_comm_init(&argc, &argv, &comm) != ENT_OK) {
        fprintf(stderr, "bench_dp_scaling: %s\n", ent_last_error());
        return 1;
    }
    ent_model_shape s = {.layers = 4, .heads = 4, .width = 256, .context = 128,
                         .vocab = 257, .padded_vocab = 320};
    int B = 8, steps = 6, warmup = 2;
    for (int i = 1; i < argc; i++) {
        int *target = NULL;
        if (strcmp(argv[i], "--layers") == 0) target = &s.layers;
        else if (strcmp(argv[i], "--width") == 0) target = &s.width;
        else if (strcmp(argv[i], "--context") == 0) target = &s.context;
        else if (strcmp(argv[i], "--batch") == 0) target = &B;
        else if (strcmp(argv[i], "--steps") == 0) target = &steps;
        if (target == NULL || i + 1 >= argc || (*target = atoi(argv[i + 1])) <= 0 ||
            steps > MAX_STEPS) {
            fprintf(stderr, "Usage: mpirun -np N bench_dp_scaling [--layers L] [--width C] "
                            "[--context T] [--batch B] [--steps S]\n");
            return 2;
        }
        i++;
    }
    s.heads = s.width % 64 == 0 ? s.width / 64 : 1;
    int rank = ent_comm_rank(comm), size = ent_comm_size(comm);
    ent_grid *self = NULL, *world = NULL;
    if (ent_grid_new_self(&self) != ENT_OK || ent_grid_new(comm, 1, &world) != ENT_OK) {
        fprintf(stderr, "bench_dp_scaling: %s\n", ent_last_error());
        return 1;
    }
    if (rank == 0)
        printf("bench_dp_scaling: %d layers, width %d, context %d (%.2fM parameters), "
               "micro-batch %d per rank, 1 thread per rank, %d timed steps\n",
               s.layers, s.width, s.context, ent_model_shape_num_params(&s) / 1e6, B, steps);

    static double one[ROUNDS * MAX_STEPS], many[ROUNDS * MAX_STEPS], wait[ROUNDS * MAX_STEPS];
    static double c1[ROUNDS * MAX_STEPS], cn[ROUNDS * MAX_STEPS];
    static double indep[ROUNDS * MAX_STEPS], ci[ROUNDS * MAX_STEPS];
    double ignored[MAX_STEPS];
    for (int round = 0; round < ROUNDS; round++) {
        for (int solo = 0; solo < size; solo++) {
            if (rank == solo)
                train(&s, self, B, steps, warmup, 1, one + round * steps, c1 + round * steps, ignored);
            idle_barrier();
        }
        train(&s, world, B, steps, warmup, 1 + rank, many + round * steps, cn + round * steps,
              wait + round * steps);
        idle_barrier();
        train(&s, self, B, steps, warmup, 1 + rank, indep + round * steps, ci + round * steps,
              ignored);
        idle_barrier();
    }
    int n = ROUNDS * steps;
    // each rank's solo median; the slowest rank sets the pace of a DP step
    double solo = bench_median(one, n), solo_c = bench_median(c1, n), solo_sum = 0, solo_min = solo;
    MPI_Allreduce(&solo, &solo_sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &solo_min, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &solo_c, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, many, n, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, cn, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, wait, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    // independent ranks: the mean of their medians
    double ind = bench_median(indep, n), ind_sum = 0;
    MPI_Allreduce(&ind, &ind_sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        double r1 = solo_sum / size, rn = bench_median(many, n), w = bench_median(wait, n);
        printf("\n%-52s %12s\n", "measurement (median of steps)", "value");
        printf("%-52s %12.0f\n", "1 rank x 1 thread: tokens/s (mean of ranks alone)", r1);
        printf("%-52s %12.0f\n", "  slowest rank alone: tokens/s", solo_min);
        printf("%-52s %12.1f\n", "  forward + backward (slowest), ms/step", solo_c);
        char label[64];
        snprintf(label, sizeof label, "%d ranks x 1 thread: tokens/s per rank", size);
        printf("%-52s %12.0f\n", label, rn);
        printf("%-52s %12.1f\n", "  forward + backward (slowest rank), ms/step", bench_median(cn, n));
        printf("%-52s %12.1f\n", "  wait for the gradient reduction, ms/step", w);
        printf("%-52s %12.0f\n", "  whole job: tokens/s", rn * size);
        snprintf(label, sizeof label, "%d ranks at once, no communication: tokens/s", size);
        printf("%-52s %12.0f\n", label, ind_sum / size);
        printf("%-52s %11.1f%%\n", "weak-scaling efficiency (per rank)", 100 * rn / r1);
        printf("%-52s %11.1f%%\n", "  against the slowest rank alone", 100 * rn / solo_min);
        printf("%-52s %11.1f%%\n", "  ceiling: ranks at once without communication",
               100 * ind_sum / size / r1);
        printf("%-52s %11.1f%%\n", "  data parallel vs ranks at once", 100 * rn * size / ind_sum);
    }
    ent_grid_free(&self);
    ent_grid_free(&world);
    ent_comm_finalize(&comm);
    return 0;
}
