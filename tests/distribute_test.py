"""Data parallelism: two replicas, and two worker processes, must compute what one device does.

Logical CPU devices must be configured before TensorFlow initialises, so the two-replica checks
run tests/two_replica_check.py in its own process; the multi-worker check runs main.py twice,
as two workers of one cluster on localhost ports.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import distribute
from maxl_tf.core import meta
from maxl_tf.core import methods
from tests import smoke_util
from tests import tolerances

CHECK = os.path.join(smoke_util.REPO, "tests", "two_replica_check.py")


def _run_check(*args):
    result = smoke_util.run_python(CHECK, *args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _checkpoint_weights(directory):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if name.startswith(("evaluator/", "generator/"))
    }


class StrategyChoiceTest(tf.test.TestCase):
    def test_one_device_helpers_are_the_identity(self):
        self.assertIs(distribute.make_strategy("none", 8), tf.distribute.get_strategy())
        self.assertEqual(distribute.num_replicas(), 1)
        loss = tf.constant(2.5)
        self.assertIs(distribute.replica_share(loss), loss)
        self.assertIs(distribute.all_reduce_mean(loss), loss)

    def test_multi_worker_without_tf_config_names_the_fix(self):
        old = os.environ.pop("TF_CONFIG", None)
        try:
            for value in (None, "not json", '{"cluster": {"worker": []}}'):
                if value is not None:
                    os.environ["TF_CONFIG"] = value
                with self.assertRaisesRegex(errors.Error, "TF_CONFIG"):
                    distribute.make_strategy("multi_worker", 8)
        finally:
            os.environ.pop("TF_CONFIG", None)
            if old is not None:
                os.environ["TF_CONFIG"] = old


@pytest.mark.slow
class TwoReplicaTest(tf.test.TestCase):
    def test_meta_gradient_and_updates_equal_one_device(self):
        report = _run_check()
        self.assertEqual(report["replicas"], 2)
        for hypergradient in methods.HYPERGRADIENTS:
            with self.subTest(hypergradient):
                values = report[hypergradient]
                self.assertGreater(values["meta_gradient_norm"], 1e-3)  # a real gradient, not zeros
                # float64 summed in halves: sums of up to 512 terms (8 images x 64 pixels), n u64;
                # the first-order difference divides its rounding by the radius 1e-3: 5.7e-11.
                bound = 512 * tolerances.FLOAT64 / meta.FINITE_DIFFERENCE_RADIUS
                for key in ("meta_gradient", "meta_loss", "evaluator_update", "generator_update"):
                    self.assertLess(values[key], bound, key)

    def test_training_loop_matches_one_device(self):
        with tempfile.TemporaryDirectory() as logdir:
            two = _run_check(logdir)
        with open(os.path.join(smoke_util.finished_run(), "results.json")) as f:
            one = json.load(f)["history"]
        self.assertLen(two, len(one))
        drift = tolerances.training_drift(len(one) * tolerances.SMOKE_STEPS_PER_EPOCH)
        for record_one, record_two in zip(one, two):
            for key in ("train/pri_loss", "train/aux_loss", "meta/loss", "meta/loss_after", "test/loss"):
                # float32, summed in halves, and batch norm's synchronised moments (E[x^2] - E[x]^2)
                # round differently: the two runs drift by at most the run's steps x 3 sqrt(2048) u32
                # (tolerances.training_drift): 1.1e-4 over the 14 steps of two epochs.
                self.assertAllClose(record_two[key], record_one[key], rtol=drift, msg=key)
            self.assertEqual(record_two["test/acc"], record_one["test/acc"])


@pytest.mark.slow
class MultiWorkerTest(tf.test.TestCase):
    def _start_workers(self, logdir, ports):
        workers = [f"localhost:{port}" for port in ports]
        processes = []
        for index in range(len(workers)):
            tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            processes.append(
                subprocess.Popen(
                    smoke_util.main_command(
                        f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
                        "--strategy=multi_worker",
                        "--noexport",
                        f"--logdir={logdir}",
                    ),
                    cwd=smoke_util.REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=dict(os.environ, PYTHONPATH=smoke_util.REPO, TF_CONFIG=tf_config),
                )
            )
        return processes

    def test_workers_stop_together_resume_and_match_one_device(self):
        root = self.get_temp_dir()
        with open(os.path.join(smoke_util.finished_run(), "results.json")) as f:
            expected = json.load(f)  # the same preset on one device
        logdir = os.path.join(root, "cluster")

        # A preempted worker: SIGTERM to worker 1 once it trains; both stop at the same step.
        chief, worker = self._start_workers(logdir, _free_ports(2))
        for line in worker.stdout:
            if "starting" in line:
                worker.send_signal(signal.SIGTERM)
                break
        outputs = [p.communicate(timeout=600)[0] for p in (chief, worker)]
        self.assertEqual([chief.returncode, worker.returncode], [143, 143], outputs)
        self.assertIn("a signal on another worker", outputs[0])
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))

        # The restarted cluster resumes from the chief's checkpoint and finishes.
        processes = self._start_workers(logdir, _free_ports(2))
        outputs = [p.communicate(timeout=600)[0] for p in processes]
        self.assertEqual([p.returncode for p in processes], [0, 0], outputs)
        self.assertIn("resuming at epoch 1 step 2", outputs[0])

        chief_weights = _checkpoint_weights(os.path.join(logdir, "checkpoints"))
        worker_weights = _checkpoint_weights(os.path.join(logdir, "workers", "worker1"))
        self.assertNotEmpty(chief_weights)
        self.assertEqual(chief_weights.keys(), worker_weights.keys())
        for name, value in chief_weights.items():
            np.testing.assert_array_equal(worker_weights[name], value, err_msg=name)  # lockstep

        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        self.assertTrue(results["complete"])
        # Two workers' all-reduced float32 sums against one device's: as TwoReplicaTest's loop,
        # the run's steps x 3 sqrt(2048) u32 (tolerances.training_drift).
        drift = tolerances.training_drift(len(expected["history"]) * tolerances.SMOKE_STEPS_PER_EPOCH)
        for record, reference in zip(results["history"], expected["history"]):
            self.assertAllClose(record["test/loss"], reference["test/loss"], rtol=drift)
            self.assertAllClose(record["meta/loss"], reference["meta/loss"], rtol=drift)
