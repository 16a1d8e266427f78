"""Models from other frameworks in the doctor.

Each submodule adapts one framework's model to what the doctor's probes and checks need: an
`nn.Module` that takes clipdoctor's batch, the model's own loss and optimizer rebuilt in torch,
and the architecture facts that torch-module inspection cannot see. The framework itself is
imported only when such a model is used (`keras`: Keras 3 on its torch backend).
"""
