"""A dstack guest agent for development and tests whose quotes, event log and Info agree.

`create_app` lives in `oauth3.simulator.app`, the simulated CVM in `oauth3.simulator.state`.
"""
