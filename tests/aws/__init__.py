"""Tests of the AWS IoT Jobs protocol edge (`upparat.aws`): pure, no broker."""
