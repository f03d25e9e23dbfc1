//! Running as one rank of an MPI job. [`join`] gives a [`Job`]: the MPI world when the
//! process was started by `mpirun`/`srun` and glassbox was built with the `mpi` feature,
//! one process alone otherwise. A [`Job`] is a [`Collective`], which is all that
//! data-parallel training ([`glassbox_sae::train::Trainer::step_with`]) and the sharded
//! harvest need. Without the feature, a process that an MPI launcher started as one of
//! several ranks is refused with the build command, so a job never silently runs R
//! copies of the same single-process work.
//!
//! Failure: MPI's default error handler ends the job on a communication error, and
//! Open MPI's launcher ends every rank when one dies, so a killed rank never leaves the
//! others waiting in a collective. [`Job::fail`] ends a job from one rank that hit an
//! error the others cannot see.

#![deny(missing_docs)]

pub use glassbox_sae::train::collective::{first_disagreement, Alone, Collective};

#[cfg(not(feature = "mpi"))]
use anyhow::bail;
use anyhow::Result;

/// How to get a build that can: printed wherever the feature is missing.
pub const HOW_TO_BUILD: &str = "install Open MPI and libclang (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev) and build glassbox with `cargo build --release -p glassbox --features mpi`";

/// The ranks an MPI launcher (Open MPI's mpirun, MPICH/Hydra, Slurm's srun) says this
/// process is one of, read from the environment it sets; `None` when none started it.
pub fn launched_ranks() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_STEP_NUM_TASKS",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// This process's place in a job.
pub enum Job {
    /// one process, not started by an MPI launcher (or started as a job of one rank)
    Alone,
    /// a rank of an MPI world
    #[cfg(feature = "mpi")]
    Mpi(mpi_job::MpiJob),
}

/// Joins the job this process was started in: the MPI world under an MPI launcher (in a
/// build with the `mpi` feature), [`Job::Alone`] otherwise. `need` says what is asked,
/// for the error of a build without the feature: `Some("--distributed")` demands MPI
/// even when no launcher started the process, `None` joins whatever there is.
pub fn join(need: Option<&str>) -> Result<Job> {
    let launched = launched_ranks();
    #[cfg(feature = "mpi")]
    {
        if launched.is_some() || need.is_some() {
            return Ok(Job::Mpi(mpi_job::MpiJob::init()?));
        }
        Ok(Job::Alone)
    }
    #[cfg(not(feature = "mpi"))]
    {
        if let Some(what) = need {
            bail!("{what} needs a glassbox built with MPI, and this one was not: {HOW_TO_BUILD}");
        }
        match launched {
            Some(r) if r > 1 => bail!(
                "this process is one of {r} ranks an MPI launcher started, but this glassbox was built without MPI, so every rank would do the whole work alone: {HOW_TO_BUILD}"
            ),
            _ => Ok(Job::Alone),
        }
    }
}

impl Job {
    /// Whether this is rank 0 (which writes the outputs).
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Ends the whole job after `err` on this rank: printed with the rank, then (with
    /// more than one rank) MPI_Abort, so the other ranks stop instead of waiting in the
    /// next collective. With one rank, gives the error back.
    pub fn fail(&self, err: anyhow::Error) -> anyhow::Error {
        match self {
            Job::Alone => err,
            #[cfg(feature = "mpi")]
            Job::Mpi(j) if j.size() > 1 => j.abort(&err),
            #[cfg(feature = "mpi")]
            Job::Mpi(_) => err,
        }
    }
}

impl Collective for Job {
    fn rank(&self) -> usize {
        match self {
            Job::Alone => 0,
            #[cfg(feature = "mpi")]
            Job::Mpi(j) => j.rank(),
        }
    }
    fn size(&self) -> usize {
        match self {
            Job::Alone => 1,
            #[cfg(feature = "mpi")]
            Job::Mpi(j) => j.size(),
        }
    }
    fn sum_f32(&self, _buf: &mut [f32]) {
        match self {
            Job::Alone => {}
            #[cfg(feature = "mpi")]
            Job::Mpi(j) => j.sum_f32(_buf),
        }
    }
    fn sum_u64(&self, _buf: &mut [u64]) {
        match self {
            Job::Alone => {}
            #[cfg(feature = "mpi")]
            Job::Mpi(j) => j.sum_u64(_buf),
        }
    }
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) {
        match self {
            Job::Alone => recv.copy_from_slice(send),
            #[cfg(feature = "mpi")]
            Job::Mpi(j) => j.all_gather_f32(send, recv),
        }
    }
    fn bytes_communicated(&self) -> u64 {
        match self {
            Job::Alone => 0,
            #[cfg(feature = "mpi")]
            Job::Mpi(j) => j.bytes_communicated(),
        }
    }
}

#[cfg(feature = "mpi")]
mod mpi_job {
    use anyhow::{bail, Result};
    use glassbox_sae::train::Collective;
    use mpi::collective::SystemOperation;
    use mpi::datatype::Equivalence;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::CommunicatorCollectives;
    use std::cell::{Cell, RefCell};

    /// The MPI world; dropping it finalises MPI.
    pub struct MpiJob {
        world: SimpleCommunicator,
        // declared after `world` so the communicator goes first
        _universe: mpi::environment::Universe,
        scratch_f32: RefCell<Vec<f32>>,
        scratch_u64: RefCell<Vec<u64>>,
        bytes: Cell<u64>,
    }

    impl MpiJob {
        pub fn init() -> Result<MpiJob> {
            // MPI is called from the main thread only; rayon's workers never touch it
            let Some((universe, _)) =
                mpi::initialize_with_threading(mpi::environment::Threading::Funneled)
            else {
                bail!("MPI was already initialised in this process");
            };
            Ok(MpiJob {
                world: universe.world(),
                _universe: universe,
                scratch_f32: RefCell::default(),
                scratch_u64: RefCell::default(),
                bytes: Cell::new(0),
            })
        }

        pub fn abort(&self, err: &anyhow::Error) -> ! {
            eprintln!(
                "error on rank {} of {}: {err:#}\nending every rank of the job (MPI_Abort)",
                self.rank(),
                self.size()
            );
            self.world.abort(1)
        }

        /// An all-reduce (sum) of `buf` in place, through a reused send buffer.
        fn sum<T: Copy + Equivalence>(&self, scratch: &RefCell<Vec<T>>, buf: &mut [T]) {
            if self.size() == 1 {
                return;
            }
            let mut send = scratch.borrow_mut();
            send.clear();
            send.extend_from_slice(buf);
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            self.count(std::mem::size_of_val(buf));
        }

        /// Payload bytes one all-reduce of `n` bytes moves per rank in a ring (reduce-
        /// scatter, then all-gather): 2 (R − 1) / R · n each way.
        fn count(&self, n_bytes: usize) {
            let r = self.size() as u64;
            self.bytes
                .set(self.bytes.get() + 2 * (r - 1) * n_bytes as u64 / r.max(1));
        }
    }

    impl Collective for MpiJob {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn sum_f32(&self, buf: &mut [f32]) {
            self.sum(&self.scratch_f32, buf)
        }
        fn sum_u64(&self, buf: &mut [u64]) {
            self.sum(&self.scratch_u64, buf)
        }
        fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) {
            self.world.all_gather_into(send, recv);
            // each rank receives every other rank's share
            let r = self.size() as u64;
            self.bytes
                .set(self.bytes.get() + (r - 1) * std::mem::size_of_val(send) as u64);
        }
        fn bytes_communicated(&self) -> u64 {
            self.bytes.get()
        }
    }
}
