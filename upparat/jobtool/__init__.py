"""`upparat-job`: create, follow and cancel upparat jobs, on AWS IoT or the local emulator.

`model` builds and checks a job (pure), `report` turns executions into a table (pure),
`backend` is the seam with two implementations (`aws` with boto3, imported only on the
AWS path; `emulator` over MQTT), `fetch` streams an http(s) file once, `cli` wires them.
"""
