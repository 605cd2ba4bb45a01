from django.db import migrations

from tenancy.operations import TenantRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("cases", "0002_initial"), ("tenancy", "0001_initial")]

    operations = [TenantRowLevelSecurity()]
