# frozen_string_literal: true

require_relative 'test_helper'

class ActionsTest < Minitest::Test
  include RunnerTest

  def setup
    super
    write_context(properties: { 'project' => {} }, context: { 'change' => { 'id' => 'c1' }, 'step' => {} })
  end

  def lines(result) = result.stdout.lines.map(&:chomp)

  def test_prerequisites_run_first_in_the_same_step_and_an_action_needs_no_block
    write('actions.rb', <<~RUBY)
      require 'opschain'
      action go_to_work: ['wake_up', 'get_dressed'] do
        log.info 'at work'
      end
      action(:wake_up) { puts 'awake' }
      action(:get_dressed) { puts 'dressed' }
      action holiday: ['wake_up', 'get_dressed']
    RUBY
    assert_equal ['awake', 'dressed', 'at work'], lines(action('go_to_work'))
    assert_equal %w[awake dressed], lines(action('holiday'))
  end

  def test_several_actions_run_in_one_step_and_the_context_names_them
    write('actions.rb', <<~RUBY)
      action(:one) { puts "one: \#{OpsChain.context.change.action}" }
      action(:two) { puts "two: \#{OpsChain.context[:step][:action]}" }
    RUBY
    assert_equal ['one: one two', 'two: one two'], lines(action('one', 'two'))
  end

  def test_listing_with_t_and_at_and_the_default_action
    write('actions.rb', <<~RUBY)
      desc 'Described action'
      action(:described) { puts 'described ran' }
      action :hidden, description: 'Given as an option' do end
      action :internal do end
      action default: [:described]
    RUBY
    described = action('-T')
    assert described.success?, described.stderr
    assert_match(/^opschain-action described +# Described action$/, described.stdout)
    assert_match(/^opschain-action hidden +# Given as an option$/, described.stdout)
    refute_match(/internal/, described.stdout)
    assert_match(/^opschain-action internal/, action('-AT').stdout)
    refute File.exist?(File.join(@repo, '.mintpress/step_result.json')), 'listing writes no result'
    assert_equal ['described ran'], lines(action)
  end

  def test_child_steps_declared_with_steps_and_run_as
    write('actions.rb', <<~RUBY)
      action :do_something, steps: ['do_something_after', :do_something_else_after], run_as: :parallel do
        puts OpsChain.child_steps.to_a.inspect, OpsChain.child_execution_strategy
      end
      action :single, steps: 'the_next_step'
      action :computed, steps: -> { %w[a b] }
    RUBY
    assert_equal ['["do_something_after", "do_something_else_after"]', 'parallel'], lines(action('do_something'))
    definitions = step_result['child_step_definitions']
    assert_equal [{ 'action' => 'do_something_after' }, { 'action' => 'do_something_else_after' }], definitions['children']
    assert_equal 'parallel', definitions['child_execution_strategy']
    action('single')
    assert_equal [{ 'action' => 'the_next_step' }], step_result['child_step_definitions']['children']
    assert_equal 'sequential', step_result['child_step_definitions']['child_execution_strategy']
    action('computed')
    assert_equal %w[a b], step_result['child_step_definitions']['children'].map { |child| child['action'] }
  end

  def test_dynamic_child_steps_append_replace_strategy_and_reading_keeps_them
    write('actions.rb', <<~RUBY)
      action :prereq_with_conditional_step do
        OpsChain.append_child_steps('conditional_step')
      end
      action check_for_child_step: ['prereq_with_conditional_step'], steps: ['child1', 'child2'], run_as: :parallel do
        puts 'seen' if OpsChain.child_steps.include?('conditional_step')
        OpsChain.child_steps
        OpsChain.child_steps.to_a
        OpsChain.child_execution_strategy = :sequential
      end
      action :replace, steps: ['do_something_after'] do
        OpsChain.child_steps = ['do_a_different_thing', 'do_another_thing']
      end
      action :older_api do
        OpsChain.child_steps('verify', 'notify', strategy: :parallel)
      end
      action :bad_strategy do
        OpsChain.child_execution_strategy = :sideways
      end
    RUBY
    assert_equal ['seen'], lines(action('check_for_child_step'))
    definitions = step_result['child_step_definitions']
    assert_equal %w[child1 child2 conditional_step], definitions['children'].map { |child| child['action'] }
    assert_equal 'sequential', definitions['child_execution_strategy']
    action('replace')
    assert_equal %w[do_a_different_thing do_another_thing], step_result['child_step_definitions']['children'].map { |child| child['action'] }
    action('older_api')
    assert_equal({ 'children' => [{ 'action' => 'verify' }, { 'action' => 'notify' }], 'child_execution_strategy' => 'parallel' }, step_result['child_step_definitions'])
    bad = action('bad_strategy')
    refute bad.success?
    assert_match(/must be :sequential or :parallel/, bad.stderr)
  end

  def test_child_definitions_carry_step_names_and_ignore_failure
    write('actions.rb', <<~RUBY)
      action :parent, steps: ['destroy_vm1', 'Hello world action']
      action :destroy_vm1, ignore_failure: true do end
      action 'Hello world action' do end
    RUBY
    assert action('parent').success?
    assert_equal [{ 'action' => 'destroy_vm1', 'ignore_failure' => true },
                  { 'action' => 'Hello world action', 'step_name' => 'Hello world action' }], step_result['child_step_definitions']['children']
  end

  def test_ignore_failure_marks_a_failing_action_successful
    write('actions.rb', <<~RUBY)
      action :hello_world, ignore_failure: true do
        raise 'This action will always fail'
      end
      action(:fails) { raise 'really fails' }
    RUBY
    ignored = action('hello_world')
    assert ignored.success?, ignored.stderr
    assert_match(/This action will always fail/, ignored.stdout)
    failed = action('fails')
    assert_equal 1, failed.exitstatus
    assert_match(/really fails/, failed.stderr)
    assert File.exist?(File.join(@repo, '.mintpress/step_result.json')), 'a failed action still writes its result'
  end

  def test_redefining_an_action_fails_unless_ignore_defined
    write('actions.rb', <<~RUBY)
      action(:hello_world) { puts 'first' }
      action(:hello_world, ignore_defined: true) { puts 'second' }
    RUBY
    assert_equal %w[first second], lines(action('hello_world'))
    write('actions.rb', "action(:twice) {}\naction(:twice) {}\n")
    result = action('twice')
    refute result.success?
    assert_match(/action twice is already defined \(pass ignore_defined: true to extend it\)/, result.stderr)
  end

  def test_friendly_names_and_step_names_resolve_in_any_case
    write('actions.rb', <<~RUBY)
      action 'Hello world action' do puts 'hello' end
      action :other, step_name: 'A Nicer Name' do puts 'other' end
      action uses_friendly: ['hello world action'] do puts 'after' end
    RUBY
    assert_equal ['hello'], lines(action('hello_world_action'))
    assert_equal ['hello'], lines(action('Hello World Action'))
    assert_equal ['other'], lines(action('a nicer name'))
    assert_equal %w[hello after], lines(action('uses_friendly'))
  end

  def test_run_action_runs_another_action_now
    write_context(properties: { 'project' => { 'dressed_already' => false } })
    write('actions.rb', <<~RUBY)
      action :go_to_work do
        OpsChain.run_action(:get_dressed) unless OpsChain.properties.dressed_already
        run_action('get_dressed')
        puts 'working'
      end
      action(:get_dressed) { puts 'dressing' }
    RUBY
    assert_equal %w[dressing dressing working], lines(action('go_to_work'))
  end

  def test_the_logger_level_can_be_changed_from_the_context
    write_context(properties: {}, context: { 'parents' => { 'environment' => { 'code' => 'dev' } } })
    write('actions.rb', <<~RUBY)
      action :enable_logging do
        log.level = ::Logger::DEBUG if OpsChain.context.parents.environment.code == 'dev'
      end
      action main: ['enable_logging'] do
        log.debug 'debugging'
        OpsChain.logger.info 'informing'
        log.warn 'warning'
      end
    RUBY
    assert_equal ['DEBUG: debugging', 'informing', 'WARN: warning'], lines(action('main'))
  end

  def test_context_dot_access_with_parents
    write_context(properties: {}, context: {
                    'change' => { 'action' => 'deploy', 'id' => 'c1' },
                    'parents' => { 'project' => { 'name' => 'Finance' }, 'environment' => { 'name' => 'Receivables' } },
                    'user' => { 'name' => 'mary', 'groups' => ['manager'] }
                  })
    write('actions.rb', <<~RUBY)
      action :report_target do
        puts "Deploying to \#{OpsChain.context.parents.environment.name} in \#{OpsChain.context.parents.project.name}"
        puts OpsChain.context.change.action, OpsChain.context[:change][:action], OpsChain.context['user']['groups'].first
        puts OpsChain.context.parents.key?('asset')
      end
    RUBY
    assert_equal ['Deploying to Receivables in Finance', 'deploy', 'deploy', 'manager', 'false'], lines(action('report_target'))
  end

  def test_parents_come_from_the_change_when_the_context_has_none
    write_context(properties: {}, context: { 'change' => { 'project_code' => 'fin', 'project_name' => 'Finance', 'environment_code' => 'dev', 'environment_name' => '' } })
    write('actions.rb', "action(:p) { puts OpsChain.context.parents.project.name, OpsChain.context.parents.environment.code, OpsChain.context.parents.environment.name.inspect }\n")
    assert_equal %w[Finance dev nil], lines(action('p'))
  end

  def test_the_sample_projects_actions_still_run
    write_context(properties: { 'project' => { 'app' => 'sample-app', 'opschain' => { 'env' => { 'GREETING' => 'hello' } } }, 'environment' => {} },
                  context: { 'change' => { 'environment_code' => 'dev' } })
    FileUtils.cp(File.join(ROOT, 'deploy/sample/actions.rb'), File.join(@repo, 'actions.rb'))
    assert_equal ['hello from dev'], lines(action('hello'))
    assert_equal [{ 'op' => 'add', 'path' => '/greetings', 'value' => 1 }, { 'op' => 'add', 'path' => '/last_greeting', 'value' => 'hello' }], diffs['environment']
    assert action('deploy').success?
    assert_equal({ 'children' => [{ 'action' => 'verify' }, { 'action' => 'notify' }], 'child_execution_strategy' => 'sequential' }, step_result['child_step_definitions'])
    assert_equal 3, action('fail').exitstatus
  end
end
