"""LifeOps Mesh, the application: the `lifeops-mesh` CLI, the operator tools and the agent
registry, on top of the runtime (`mesh`), the contract (`lifeops_contract`) and the agents."""

__version__ = "0.1.0"
