"""Described capacities: parsed from a string, a YAML file, ray.nodes(), this machine."""

from __future__ import annotations

import pytest

from orchestrator.cluster.capacity import Capacity, CapacityError


def test_nodes_times_resources_parses_to_that_many_equal_nodes() -> None:
    cap = Capacity.parse("4 nodes x {CPU: 16, GPU: 1}")
    assert cap.nodes == ({"CPU": 16.0, "GPU": 1.0},) * 4
    assert cap.total() == {"CPU": 64.0, "GPU": 4.0}
    assert cap.largest("GPU") == 1.0 and cap.largest("memory") == 0.0


def test_terms_join_with_plus_in_order_and_short_forms_read() -> None:
    cap = Capacity.parse("1 x {CPU: 2} + 2 nodes x {cpus: 16, gpu: 1, memory: 64GiB} + {CPU: 1}")
    assert cap.nodes == ({"CPU": 2.0}, {"CPU": 16.0, "GPU": 1.0, "memory": 64 * 2**30},
                         {"CPU": 16.0, "GPU": 1.0, "memory": 64 * 2**30}, {"CPU": 1.0})
    assert Capacity.parse("2 x {CPU: 8}").nodes == ({"CPU": 8.0},) * 2
    assert Capacity.parse("1 node x {CPU: 4, site_b: 1, memory: 500MB}").nodes == (
        {"CPU": 4.0, "site_b": 1.0, "memory": 5e8},)


def test_describe_reads_back_to_the_same_capacity() -> None:
    cap = Capacity.parse("1 x {CPU: 2} + 3 nodes x {CPU: 16, GPU: 0.5, memory: 1.5GiB}")
    assert cap.describe() == "1 node x {CPU: 2} + 3 nodes x {CPU: 16, GPU: 0.5, memory: 1.5GiB}"
    assert Capacity.parse(cap.describe()) == cap


@pytest.mark.parametrize(("text", "named"), [
    ("4 nodes x {CPU: many}", "'CPU: many'"),
    ("four nodes x {CPU: 2}", "'four'"),
    ("0 x {CPU: 2}", "'0'"),
    ("1 x {CPU: 2} + 2 x CPU: 4", "'2 x CPU: 4'"),
    ("2 x {CPU 4}", "'CPU 4'"),
    ("2 x {CPU: 4,}", "empty entry"),
    ("2 x {CPU: 4, cpu: 2}", "CPU is given twice"),
    ("2 x {GPU: 0}", "some resource above 0"),
    ("2 x {memory: 3 parsecs}", "'memory: 3 parsecs'"),
])
def test_a_bad_description_is_refused_naming_the_bad_part(text: str, named: str) -> None:
    with pytest.raises(CapacityError) as err:
        Capacity.parse(text)
    assert named in str(err.value)


def test_yaml_file_lists_nodes_or_counted_nodes(tmp_path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("- {CPU: 2}\n- count: 3\n  resources: {CPU: 16, GPU: 1, memory: 8GiB}\n")
    cap = Capacity.from_yaml(path)
    assert cap.nodes == ({"CPU": 2.0},) + ({"CPU": 16.0, "GPU": 1.0, "memory": 8.0 * 2**30},) * 3
    assert Capacity.from_spec(str(path)) == cap
    assert Capacity.from_spec("3 x {CPU: 1}").total() == {"CPU": 3.0}


def test_a_bad_yaml_file_is_refused_naming_the_item(tmp_path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("- {CPU: 2}\n- count: 2\n  resources: {CPU: 16}\n  zone: eu\n")
    with pytest.raises(CapacityError, match=r"item 1: unknown keys \['zone'\]"):
        Capacity.from_yaml(path)
    path.write_text("nodes: 4\n")
    with pytest.raises(CapacityError, match="expected a non-empty list"):
        Capacity.from_yaml(path)
    with pytest.raises(CapacityError, match="does not exist"):
        Capacity.from_spec(str(tmp_path / "missing.yaml"))


def test_ray_nodes_keep_alive_nodes_without_bookkeeping_entries() -> None:
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {
            "CPU": 4.0, "memory": 8e9, "object_store_memory": 2e9, "node:10.0.0.1": 1.0,
            "node:__internal_head__": 1.0, "GPU": 1.0, "accelerator_type:T4": 1.0, "site_b": 1.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"CPU": 64.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 2.0, "memory": 4e9}},
    ]
    cap = Capacity.from_ray_nodes(nodes)
    assert cap.nodes == ({"CPU": 4.0, "memory": 8e9, "GPU": 1.0, "site_b": 1.0},
                         {"CPU": 2.0, "memory": 4e9})
    with pytest.raises(CapacityError, match="no alive node"):
        Capacity.from_ray_nodes(nodes[1:2])


def test_this_machine_is_one_node_of_its_counts() -> None:
    assert Capacity.this_machine(2, 0, 24e9).nodes == ({"CPU": 2.0, "memory": 24e9},)
    assert Capacity.this_machine(8, 1).nodes == ({"CPU": 8.0, "GPU": 1.0},)
